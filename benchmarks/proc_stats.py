"""What a process tree costs the machine, read from /proc (Linux): CPU, wake-ups, page faults.

Used by ``train_step.py`` to show where a training step's time goes beside the server.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rfind(")") + 2 :].split()  # fields from the 3rd (state) on


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except OSError:
                continue
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(found)


def command(pid: int) -> str:
    """The process's command line (Ray names its workers ``ray::<Class>``)."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()
    except OSError:
        return "?"


def minor_faults(pid: int) -> int:
    """Page faults served without I/O so far (each a fresh page zeroed by the kernel)."""
    return int(_stat(pid)[7])


def _cpu_and_switches(pid: int) -> tuple[float, int]:
    fields = _stat(pid)
    seconds = (int(fields[11]) + int(fields[12])) / _TICK
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if "ctxt_switches" in line:
                    switches += int(line.split()[1])
    return seconds, switches


@dataclass
class ProcessLoad:
    """One process's share of a core and its threads' wake-ups (context switches) per second."""

    pid: int
    command: str
    cpu: float
    wakeups: float


def idle_load(pids: list[int], seconds: float) -> list[ProcessLoad]:
    """Each process's load over ``seconds``, busiest (by wake-ups) first."""
    before = {}
    for pid in pids:
        try:
            before[pid] = _cpu_and_switches(pid)
        except OSError:
            continue
    start = time.perf_counter()
    time.sleep(seconds)
    took = time.perf_counter() - start
    loads = []
    for pid, (cpu, switches) in before.items():
        try:
            cpu_after, switches_after = _cpu_and_switches(pid)
        except OSError:
            continue
        loads.append(
            ProcessLoad(
                pid,
                command(pid)[:60],
                (cpu_after - cpu) / took,
                (switches_after - switches) / took,
            )
        )
    return sorted(loads, key=lambda p: -p.wakeups)
