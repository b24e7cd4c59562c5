"""One gloo network device per process, shared by every gloo process group it creates.

A gloo TCP device runs a loop thread that wakes every 10 ms whether or not anything is in
flight, and torch gives each process group a device of its own. vLLM's engine creates 13 gloo
groups even for a single CPU worker, so an idle sampler woke ~1,300 times a second, half of
an idle local server's wake-ups (3,000 a second of them cost a training step beside them ~4%
on two cores). One device serves any number of groups (gloo keeps a pair per group on it), so
sharing it leaves one loop thread per process. Installed in the trainer ranks before
DeepSpeed joins torch.distributed, and in vLLM's processes as a general plugin
(``tinsmith_gloo_device``), which vLLM loads before it initialises its groups.
"""

from __future__ import annotations

import datetime
import logging

log = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)  # torch's own default for gloo groups


def install() -> None:
    """Make every gloo group created from now on in this process use one shared device
    (idempotent). Groups created with explicit options keep theirs."""
    from torch.distributed import distributed_c10d

    base = distributed_c10d.ProcessGroupGloo
    if getattr(base, "tinsmith_shared_device", False):
        return
    shared: list[object] = []

    class SharedDeviceGloo(base):  # type: ignore[misc,valid-type]
        """``ProcessGroupGloo`` on the process's one device (see the module docstring)."""

        tinsmith_shared_device = True

        def __init__(
            self,
            store: object,
            rank: int,
            size: int,
            options: object = None,
            timeout: datetime.timedelta = _DEFAULT_TIMEOUT,
        ) -> None:
            if options is None:
                if not shared:
                    shared.append(base.create_default_device())
                options = base._Options()  # type: ignore[attr-defined]
                options._timeout = timeout  # type: ignore[attr-defined]
                options._devices = [shared[0]]  # type: ignore[attr-defined]
            super().__init__(store, rank, size, options)

    distributed_c10d.ProcessGroupGloo = SharedDeviceGloo  # type: ignore[misc,assignment]
    log.debug("gloo process groups share one device in this process")
