"""glibc malloc for a trainer rank: reuse memory for short micro-batches, give it back for long.

PyTorch's CPU tensors come straight from malloc. glibc maps a block of 32 MiB or more afresh and
unmaps it on free, and gives the heap's top back once more than 128 KiB of it is free, so every
step's big tensors (at 8 x 128 tokens of SmolLM2: the logits, their softmax and gradients, 200 MB
each) came back as fresh pages the kernel zeroes on first touch: 200,000-400,000 page faults a
step, 8% of it on a quiet machine and ~20% beside a server's processes (the bare loop suffered
the same). So a rank keeps its memory, as PyTorch's CUDA allocator does: short micro-batches
take every block from the heap (no mapping) and the heap is never trimmed by itself, so from the
second step on a step finds its memory already there and faults ~0 times. Its RSS stays at its
high-water mark, which the micro-batch budget (``micro_batch_tokens``) bounds. Long
(checkpointed) micro-batches do the opposite: blocks of 4 MiB and more are mapped and the heap's
free top is trimmed as glibc does by default, so activations freed layer by layer go straight
back to the system (with a kept heap an 8,192-token step held ~7 GiB of RSS for ~1 GiB of live
tensors), and the heap that short micro-batches kept is released when a long one comes. A rank
that has had no call for ``IDLE_RELEASE_SECONDS`` gives its kept heap back too (``working``):
several models' ranks share a node, and an idle one holding its peak (8 GB after a mixed batch)
got a busy one killed by Ray's memory monitor; a step after the release faults its pages in again
once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from collections.abc import Iterator

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

LONG_ROWS_MMAP_THRESHOLD = 4 << 20
GLIBC_MMAP_MAX = 65536  # glibc's default: mapping allowed
IDLE_RELEASE_SECONDS = 5.0
# mallopt takes an int but glibc stores the trim threshold as a size_t: -1 is "never". (Stop 30
# tried 2**31 - 1: a mixed batch frees more than 2 GiB at the heap's top, which was trimmed, and
# the next step faulted ~200k pages again.) It is set at run time, not by a GLIBC_TUNABLES at the
# rank's start: with that, the in-memory sync took twice as long (cause not found).
NEVER_TRIM = -1
GLIBC_TRIM_THRESHOLD = 128 << 10  # glibc's default


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


_mode: list[bool | None] = [None]  # long_rows of the mode set last (None: glibc's defaults)
_kept: list[bool] = [False]  # short micro-batches have had a kept heap in this process


def tune_for(long_rows: bool) -> None:
    """Set malloc for the micro-batch to come (only when the kind changes): short rows reuse
    the heap, long rows map big blocks and return them (see the module docstring)."""
    libc = _glibc()
    if libc is None or _mode[0] is long_rows:
        return
    if long_rows:
        libc.mallopt(_M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(_M_MMAP_THRESHOLD, LONG_ROWS_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        if _mode[0] is False:
            release_kept_memory()  # what short micro-batches kept in the heap
    else:
        # A block glibc cannot place in the heap (another thread's arena past 64 MiB) is still
        # mapped: with mapping "off" glibc falls back to it rather than fail.
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, NEVER_TRIM)
        _kept[0] = True
    _mode[0] = long_rows


def between_layers() -> None:
    """Called as each checkpointed layer (or logits chunk) starts: in a long micro-batch of a
    process whose heap short ones kept, hand back the pages freed since the last call. glibc
    serves a block from the heap's free chunks before it maps one, so a long micro-batch's blocks
    land in the holes of the kept heap, and what they free there stays resident (glibc trims only
    the top): an 8,192-token step after three short ones held ~2 GiB more and peaked ~1.2 GiB
    higher than in a fresh process."""
    if _mode[0] is True and _kept[0]:
        release_kept_memory()


_idle_timer: list[threading.Timer | None] = [None]


def release_kept_memory() -> None:
    """Give every free page of the heap back to the system (``malloc_trim``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def working(idle_release_seconds: float = IDLE_RELEASE_SECONDS) -> Iterator[None]:
    """Around a rank's call: no release while it runs; if no other call comes within
    ``idle_release_seconds`` of its end, the kept heap is released (off the rank's thread)."""
    if _idle_timer[0] is not None:
        _idle_timer[0].cancel()
    try:
        yield
    finally:
        timer = threading.Timer(idle_release_seconds, release_kept_memory)
        timer.daemon = True
        _idle_timer[0] = timer
        timer.start()
