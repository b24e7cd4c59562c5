"""The trainer's and sampler's process tuning, each in a fresh Python (both change process-wide
state): gloo groups sharing one network loop thread, and malloc reusing the heap for short
micro-batches. Their effect on a real step: ``benchmarks/train_step.py`` (page faults a step,
the idle server's wake-ups)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points


def _run(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_gloo_groups_share_one_loop_thread_and_still_reduce() -> None:
    code = """
    import os, socket, torch, torch.distributed as dist
    from tinsmith.actors import gloo_device
    if os.environ.get("SHARE"):
        gloo_device.install()
        gloo_device.install()  # idempotent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    groups = [None] + [dist.new_group([0], backend="gloo") for _ in range(4)]
    for g in groups:
        t = torch.arange(4.0); dist.all_reduce(t, group=g); assert t.tolist() == [0, 1, 2, 3]
        dist.barrier(group=g)
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    print(names.count("gloo_tcp_loop"))
    dist.destroy_process_group()
    """
    shared = _run(code, env={"SHARE": "1"})
    own = _run(code)
    assert (int(shared), int(own)) == (1, 5), (shared, own)


def test_gloo_device_is_a_vllm_plugin() -> None:
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("tinsmith_gloo_device") == "tinsmith.actors.gloo_device:install"


def test_short_rows_keep_big_blocks_in_the_heap_and_long_rows_give_them_back() -> None:
    out = _run(
        """
        import torch
        from tinsmith.actors import malloc_tuning

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        def in_heap(ptr):
            for line in open("/proc/self/maps"):
                if line.rstrip().endswith("[heap]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    return lo <= ptr < hi
            return False

        def block():  # 200 MiB, written once: (in the heap?, RSS it leaves behind when freed)
            before = rss()
            t = torch.ones(50 * 2**20)
            heap = in_heap(t.data_ptr())
            del t
            return heap, rss() - before

        malloc_tuning.tune_for(long_rows=False)
        short_heap, short_kept = block()
        kept = rss()
        malloc_tuning.tune_for(long_rows=True)  # gives back what the heap kept
        released = kept - rss()
        long_heap, long_kept = block()
        print(short_heap, short_kept >> 20, released >> 20, long_heap, long_kept >> 20)
        """,
    )
    short_heap, short_kept, released, long_heap, long_kept = out.split()
    assert short_heap == "True" and int(short_kept) > 190, out  # kept for the next step
    assert int(released) > 190, out
    assert long_heap == "False" and int(long_kept) < 10, out  # mapped, unmapped on free


def test_a_long_micro_batch_in_a_kept_heap_gives_back_what_it_frees_between_layers() -> None:
    """glibc serves a block from the heap's free chunks before mapping one: after short
    micro-batches a long one's blocks land in the kept heap's holes, where what they free stays
    resident unless it is released as each layer starts."""
    out = _run(
        """
        import torch
        from tinsmith.actors import malloc_tuning

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        malloc_tuning.tune_for(long_rows=False)
        hole = torch.ones(50 * 2**20)  # 200 MiB...
        pin = torch.ones(2**18)  # ...below a live 1 MiB block: freed, it is a hole, not the top
        del hole
        malloc_tuning.tune_for(long_rows=True)
        start = rss()
        layer = torch.ones(25 * 2**20)  # 100 MiB: taken from the hole, not mapped
        del layer
        stayed = rss() - start
        malloc_tuning.between_layers()
        print(stayed >> 20, (rss() - start) >> 20)
        """,
    )
    stayed, after = (int(x) for x in out.split())
    assert stayed > 90, out  # the hole's pages, touched and kept
    assert after < 10, out


def test_an_idle_rank_gives_its_kept_heap_back() -> None:
    """Several models' ranks share a node: the heap a short step keeps is released once no
    call has come for a while, not while calls keep coming."""
    out = _run(
        """
        import time
        import torch
        from tinsmith.actors import malloc_tuning

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        malloc_tuning.tune_for(long_rows=False)
        start = rss()
        for _ in range(2):  # back to back: the second call cancels the first one's release
            with malloc_tuning.working(idle_release_seconds=0.5):
                t = torch.ones(50 * 2**20)
                del t
        kept = rss() - start
        time.sleep(0.2)
        still = rss() - start
        time.sleep(1.0)
        print(kept >> 20, still >> 20, (rss() - start) >> 20)
        """,
    )
    kept, still, after = (int(x) for x in out.split())
    assert kept > 190 and still > 190, out
    assert after < 10, out
