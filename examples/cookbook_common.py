"""What the tinker-cookbook examples share: the model, its renderer,
a server to talk to, their metrics.

The examples run the cookbook's own training loops unchanged; this module only decides where they
point (a running tinsmith given by `--base-url` / $TINKER_BASE_URL, or one started here on
`configs/local.yaml`) and reads back the `metrics.jsonl` the cookbook's logger writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tinsmith.cluster.launcher import ServerProcess

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2-Instruct speaks ChatML (<|im_start|>role ... <|im_end|>); the cookbook's qwen3_instruct
# renderer writes exactly that, with no thinking block, and stops on <|im_end|>. The cookbook's
# recommended-renderer table does not know SmolLM2, so the examples name the renderer explicitly.
RENDERER = "qwen3_instruct"
ROOT = Path(__file__).resolve().parent.parent


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url",
        default=os.environ.get("TINKER_BASE_URL"),
        help="a running tinsmith (default: $TINKER_BASE_URL, else start one on --config)",
    )
    parser.add_argument(
        "--config",
        default=str(ROOT / "configs" / "local.yaml"),
        help="config of the server to start",
    )
    parser.add_argument(
        "--log-path",
        default=None,
        help="where the cookbook writes metrics.jsonl (default: temp dir)",
    )


@contextmanager
def tinsmith(base_url: str | None, config: str) -> Iterator[str]:
    """Yield the base URL of a tinsmith server: the given one, or a local
    one started (and stopped) here."""
    os.environ.setdefault(
        "HF_HUB_OFFLINE", "1"
    )  # the tokenizer comes from the local cache, never the hub
    if base_url:
        yield base_url
        return
    os.environ.setdefault(
        "TINKER_API_KEY", "tml-local-examples"
    )  # the local preset accepts any tml- key
    print(
        f"starting tinsmith serve --config {config} (the first start takes a minute or two) ...",
        flush=True,
    )
    with ServerProcess(config) as server:
        print(f"server up at {server.base_url} (log: {server.log_path})", flush=True)
        yield server.base_url


def log_dir(log_path: str | None, name: str) -> str:
    """A fresh directory for the cookbook's logs: its loops resume
    from whatever a reused one holds."""
    if log_path:
        Path(log_path).mkdir(parents=True, exist_ok=True)
        return log_path
    return tempfile.mkdtemp(prefix=f"tinsmith-{name}-")


def read_metrics(log_path: str) -> list[dict[str, float]]:
    """The rows the cookbook's ml_log wrote to metrics.jsonl, in step order."""
    path = Path(log_path) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda row: row.get("step", 0))


def quiet_logs() -> None:
    """Keep the cookbook's per-step INFO lines, drop the HTTP client's chatter."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("httpx", "httpcore", "tinker"):
        logging.getLogger(name).setLevel(logging.WARNING)
