"""Console pages at scale: render time of each page with 1,000 training runs (100 sessions),
1,000 checkpoints and 10,000 metric points on one run, in the server's own SQLite store.

The pages are served by the real app over HTTP (FastAPI's in-process client); no model runs,
since no page here calls a worker (the cluster page's workers and the playground's samples are
the workers' own time). Each figure is the median of --repeats requests; the issue's target is
under 1 s per page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import median


def _fill(state: object, runs: int, checkpoints: int, points: int) -> tuple[str, str]:
    from tinsmith.store.records import CheckpointRecord, RunRecord, SessionRecord, utcnow
    from tinsmith.types.training import LoraConfig

    store = state.store  # type: ignore[attr-defined]
    lora = LoraConfig(rank=8)
    for s in range(runs // 10):
        store.put_session(SessionRecord(session_id=f"s{s}", owner="alice"))
    for i in range(runs):
        run_id = f"s{i // 10}:train:{i % 10}"
        store.put_run(
            RunRecord(
                training_run_id=run_id,
                session_id=f"s{i // 10}",
                base_model="m",
                owner="alice",
                lora=lora,
            )
        )
    run = "s0:train:0"
    for i in range(checkpoints):
        store.add_checkpoint(
            CheckpointRecord(
                training_run_id=run,
                checkpoint_id=f"weights/c{i}",
                checkpoint_type="training",
                tinker_path=f"tinker://{run}/weights/c{i}",
                owner="alice",
                base_model="m",
                lora=lora,
                storage_key=f"k{i}",
                size_bytes=1 << 20,
                sha256="0" * 64,
                step=i,
                has_optimizer=True,
            ),
            replace=False,
        )
    now = utcnow()
    for i in range(points):
        kind = "optim_step" if i % 2 else "forward_backward"
        metrics = {"loss:sum": 1.0 / (i + 1), "num_tokens:sum": 512.0}
        store.add_metrics(run, kind, metrics, now, points)
    return run, "weights/c0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from tinsmith.cluster.checkpoints import open_checkpoint_service
    from tinsmith.cluster.config import AuthConfig
    from tinsmith.cluster.server import ServerState, build_app
    from tinsmith.storage.config import StorageConfig

    os.environ["TINSMITH_API_KEYS"] = "alice:tml-alice"
    with tempfile.TemporaryDirectory(prefix="tinsmith-bench-console-") as tmp:
        state = ServerState(
            models={},
            checkpoints=open_checkpoint_service(StorageConfig(), Path(tmp)),
            auth=AuthConfig(mode="keys"),
        )
        start = time.perf_counter()
        run, ckpt = _fill(state, args.runs, args.checkpoints, args.points)
        print(
            f"filled the store in {time.perf_counter() - start:.1f} s: {args.runs} runs, "
            f"{args.checkpoints} checkpoints, {args.points} metric points on one run"
        )
        pages = {
            "sessions": "/console/sessions",
            "session": "/console/sessions/s0",
            "training runs": "/console/training_runs",
            "training run (10k points)": f"/console/training_runs/{quote(run, safe='')}",
            "checkpoints": "/console/checkpoints",
            "checkpoint": f"/console/checkpoints/{quote(run, safe='')}/{quote(ckpt, safe='')}",
            "playground (form)": "/console/playground",
            "cluster": "/console/cluster",
        }
        with TestClient(build_app(state)) as client:
            client.post("/console/login", data={"api_key": "tml-alice"})
            print(f"{'page':<28} {'median ms':>10} {'KiB':>7}")
            for name, url in pages.items():
                times, size = [], 0
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    resp = client.get(url)
                    times.append(time.perf_counter() - t0)
                    assert resp.status_code == 200, (url, resp.status_code)
                    size = len(resp.content)
                print(f"{name:<28} {median(times) * 1000:>10.1f} {size / 1024:>7.1f}")


if __name__ == "__main__":
    main()
