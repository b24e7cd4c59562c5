"""A sampler parks idle adapters itself, least recently used first, so vLLM never evicts one."""

from __future__ import annotations

from tinsmith.actors.lora_residency import LoraResidency


def fill(residency: LoraResidency[str], count: int) -> None:
    for i in range(count):
        for key in residency.to_evict():
            residency.park(key)
        residency.add(f"a{i}", f"req{i}")


def test_stays_below_vllm_capacity_and_parks_least_recently_used() -> None:
    residency: LoraResidency[str] = LoraResidency(capacity=4)
    fill(residency, 3)
    assert list(residency.resident) == ["a0", "a1", "a2"] and residency.to_evict() == ["a0"]
    assert residency.use("a0") == "req0"  # now most recently used, and in flight
    residency.done("a0")
    assert residency.to_evict() == ["a1"]
    fill(residency, 6)  # re-adding a0..a5: never more than capacity - 1 resident
    assert len(residency.resident) <= 3 and len(residency) == 6
    assert (
        "a0" in residency and residency.use("a0") is None
    )  # parked: must be registered again first


def test_never_parks_an_adapter_in_use() -> None:
    residency: LoraResidency[str] = LoraResidency(capacity=3)
    fill(residency, 2)
    residency.use("a0")
    residency.use("a1")
    assert residency.to_evict() == []  # both busy: nothing may go
    residency.done("a1")
    assert residency.to_evict() == ["a1"]
    residency.done("a0")
    assert residency.in_flight == {}


def test_has_room_only_when_an_idle_adapter_can_go() -> None:
    residency: LoraResidency[str] = LoraResidency(capacity=3)
    fill(residency, 2)
    residency.use("a0")
    residency.use("a1")
    assert not residency.has_room()  # the sampler waits for a release
    residency.done("a0")
    assert residency.has_room()
