"""Shared pieces of the benchmark scripts: the fixed batch and a server context."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LORA_RANK = 8
BATCH = 8
SEQ_LEN = 128


def fixed_batch(vocab: int = 49152, seed: int = 0) -> list[list[int]]:
    """BATCH sequences of SEQ_LEN + 1 tokens (inputs are [:-1], targets [1:])."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(100, vocab, size=SEQ_LEN + 1)] for _ in range(BATCH)]


def median(values: list[float]) -> float:
    return float(statistics.median(values))
