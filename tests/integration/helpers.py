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


def sampler_dir(data_dir: Path, tinker_path: str) -> Path:
    """Where the local store keeps a named sampler checkpoint."""
    run, kind, name = tinker_path[len("tinker://") :].split("/")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run)
    return data_dir / "checkpoints" / safe / kind / name


def expect_user_error(future: object, *needles: str) -> None:
    """The future fails with category ``user`` and a message containing every needle."""
    with pytest.raises(tinker.RequestFailedError) as info:
        future.result()  # type: ignore[attr-defined]
    assert str(info.value.category).lower().endswith("user"), info.value.category
    for needle in needles:
        assert needle in info.value.message, info.value.message
