"""Small helpers shared by the SDK integration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tinker
from tinker import types


def datum(tokens: list[int], weights: list[float] | None = None) -> types.Datum:
    """Next-token datum: input tokens[:-1], targets tokens[1:]."""
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights if weights is not None else [1.0] * n},
    )


def random_tokens(seed: int, length: int, vocab: int = 49152) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(100, vocab, size=length)]


def read_adapter(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def checkpoint_dir(server: object, tinker_path: str) -> Path:
    """Download a checkpoint's archive through the server's archive-URL route and unpack it
    (verified against its manifest) into a fresh directory."""
    import json
    import urllib.request
    import uuid

    from tinsmith.storage.archive import unpack

    run, kind, name = tinker_path[len("tinker://") :].split("/")
    base = server.base_url  # type: ignore[attr-defined]
    headers = {"X-API-Key": "tml-tests"}
    req = urllib.request.Request(
        f"{base}/api/v1/training_runs/{run}/checkpoints/{kind}/{name}/archive", headers=headers
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        url = json.loads(resp.read())["url"]
    root = server.workdir / "downloads" / uuid.uuid4().hex[:8]  # type: ignore[attr-defined]
    root.mkdir(parents=True)
    archive = root / "checkpoint.tar"
    with urllib.request.urlopen(url, timeout=60) as resp:
        archive.write_bytes(resp.read())
    unpack(archive, root / "files")
    return root / "files"


def expect_user_error(future: object, *needles: str) -> None:
    """The request is refused as the client's fault, naming the problem: either at once with a 4xx
    (``BadRequestError``) or as a future that fails with category ``user``."""
    with pytest.raises((tinker.RequestFailedError, tinker.BadRequestError)) as info:
        future.result()  # type: ignore[attr-defined]
    if isinstance(info.value, tinker.RequestFailedError):
        assert str(info.value.category).lower().endswith("user"), info.value.category
        message = info.value.message
    else:
        message = str(info.value)
    for needle in needles:
        assert needle in message, message


def model_status(server: object, base_model: str) -> dict[str, object]:
    """``GET /api/v1/tinsmith/status`` for one base model: workers (memory, adapters, node), and per
    sampler replica: alive, requests served, restarts."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{server.base_url}/api/v1/tinsmith/status",  # type: ignore[attr-defined]
        headers={"X-API-Key": "tml-tests"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        models = json.loads(resp.read())
    return next(m for m in models if m["base_model"] == base_model)  # type: ignore[no-any-return]
