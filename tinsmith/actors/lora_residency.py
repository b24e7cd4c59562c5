"""Which adapters a vLLM replica keeps registered, so that vLLM itself never has to evict one.

vLLM keeps at most `max_cpu_loras` adapters registered and evicts the least recently used when a
new one arrives. That eviction runs inside the step that activates a batch's adapters, and when
it hits an adapter the same batch needs, the engine dies (KeyError in its LoRA mapping; seen in
async RL, where every training step adds a sampler version while rollouts of older versions are
still running). So a sampler evicts first, itself: before registering another adapter it parks
the least recently used ones that no request is using (vLLM `remove_lora`), keeping the count
below vLLM's capacity (and if every registered adapter is in use, it waits for one to be
released); a parked adapter is registered again, from the same files, when a request needs it.
Pure bookkeeping here; `SamplerWorker` makes the vLLM calls.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Generic, TypeVar

R = TypeVar("R")


class LoraResidency(Generic[R]):
    """Registered (resident) adapters in LRU order, parked ones, and
    requests in flight per adapter."""

    def __init__(self, capacity: int) -> None:
        # vLLM evicts when registering one more would exceed its capacity; stay one below that.
        self.limit = max(1, capacity - 1)
        self.resident: OrderedDict[str, R] = OrderedDict()
        self.parked: dict[str, R] = {}
        self.in_flight: Counter[str] = Counter()

    def __contains__(self, key: str) -> bool:
        return key in self.resident or key in self.parked

    def __len__(self) -> int:
        return len(self.resident) + len(self.parked)

    def to_evict(self) -> list[str]:
        """Resident adapters to park so that one more fits: least
        recently used first, never one in use."""
        excess = len(self.resident) + 1 - self.limit
        idle = [key for key in self.resident if self.in_flight[key] == 0]
        return idle[: max(0, excess)]

    def has_room(self) -> bool:
        """Whether one more adapter can be registered now (after parking what `to_evict` names)."""
        return len(self.resident) + 1 - len(self.to_evict()) <= self.limit

    def park(self, key: str) -> R:
        request = self.resident.pop(key)
        self.parked[key] = request
        return request

    def add(self, key: str, request: R) -> None:
        self.parked.pop(key, None)
        self.resident[key] = request

    def use(self, key: str) -> R | None:
        """The resident request for `key` (now most recently used), counted as
        in flight; None if not resident."""
        request = self.resident.get(key)
        if request is not None:
            self.resident.move_to_end(key)
            self.in_flight[key] += 1
        return request

    def done(self, key: str) -> None:
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
