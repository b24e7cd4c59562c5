"""Placement: config -> placement groups -> trainer, sampler and coordinator actors.

The only module that creates placement groups. Trainer ranks of a model share one PACK group
(rank i pinned to bundle i); sampler replicas are spread. Actors themselves never place anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tinsmith.cluster.config import ClusterConfig, ModelSpec, SamplerConfig, TrainerConfig
from tinsmith.errors import ConfigurationError
from tinsmith.storage.transfer import StorageSite
from tinsmith.types.architectures import ModelShape, read_model_shape

log = logging.getLogger(__name__)


def _bundle(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": cpus, **custom}
    if gpus:
        bundle["GPU"] = gpus
    return bundle


def check_capacity(config: ClusterConfig, available: dict[str, float]) -> None:
    """Refuse, before creating anything, a config whose actors can never all be placed.

    Without this, an impossible placement group waits forever. The check sums every model's
    trainer and sampler requests (CPU, GPU, custom resources) against the cluster's totals and
    names the config fields that ask for too much.
    """
    needed: dict[str, float] = {}
    asked_by: dict[str, list[str]] = {}
    for spec in config.models:
        trainer, sampler = config.trainer_for(spec), config.sampler_for(spec)
        t = {
            "CPU": trainer.num_cpus_per_rank,
            "GPU": trainer.num_gpus_per_rank,
            **trainer.resources,
        }
        s = {"CPU": sampler.num_cpus, "GPU": sampler.num_gpus, **sampler.resources}
        for per_actor, count, group in (
            (t, trainer.num_ranks, "trainer"),
            (s, sampler.num_replicas, "sampler"),
        ):
            for name, amount in per_actor.items():
                if amount and count:
                    needed[name] = needed.get(name, 0.0) + amount * count
                    asked_by.setdefault(name, []).append(
                        f"{spec.name}: {group} ({count} x {amount:g})"
                    )
    short = {
        name: amount for name, amount in needed.items() if amount > available.get(name, 0.0) + 1e-9
    }
    if short:
        problems = "; ".join(
            f"{name}: config asks for {amount:g} [{', '.join(asked_by[name])}] "
            f"but the Ray cluster has {available.get(name, 0.0):g}"
            for name, amount in sorted(short.items())
        )
        raise ConfigurationError(
            f"impossible placement: {problems}. Lower num_gpus_per_rank / num_gpus / num_cpus / "
            "resources or num_ranks / num_replicas, add nodes, or set ray_autoscaling: true if "
            "nodes will join."
        )


# max_calls=1: its worker exits after the call instead of idling in Ray's pool for good (an idle
# worker's main thread wakes 100 times a second, and holds ~130 MB).
@ray.remote(num_cpus=0, max_calls=1)
def _rendezvous() -> tuple[str, int]:
    """Run on rank 0's node: its IP and a free port for torch.distributed."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        port = int(s.getsockname()[1])
    return ray.util.get_node_ip_address(), port


STOP_WORKERS_SECONDS = 30.0


@dataclass
class ModelActors:
    """Everything started for one base model; ``shutdown`` stops it all.

    ``trainers`` and ``samplers`` are the workers as first started: the coordinator replaces a
    dead replica or restarts the ranks, and only it holds the current handles.
    """

    spec: ModelSpec
    coordinator: ActorHandle | None  # None until its workers are ready
    trainers: list[ActorHandle]
    samplers: list[ActorHandle]
    groups: list[PlacementGroup] = field(default_factory=list)
    factories: tuple[TrainerFactory, SamplerFactory] | None = None
    shape: ModelShape | None = None  # its config.json, read once at launch

    def connect(self) -> ActorHandle:
        """Start the coordinator over the (ready) workers."""
        from tinsmith.actors.batching import batch_layout
        from tinsmith.actors.coordinator import Coordinator

        assert self.factories is not None and self.shape is not None
        trainer_factory, sampler_factory = self.factories
        coordinator: ActorHandle = (
            cast(ActorHandle, ray.remote(Coordinator))
            .options(num_cpus=0, max_concurrency=1000)
            .remote(
                self.spec.name,
                self.shape.vocab_size,
                self.spec.max_context_length,
                batch_layout(trainer_factory.config, self.shape.arch.auto_class == "causal_lm"),
                self.trainers,
                self.samplers,
                sampler_factory,
                trainer_factory,
                self.shape.image_token_id,
            )
        )
        ray.get(coordinator.ping.remote())
        return coordinator

    def shutdown(self, timeout: float = STOP_WORKERS_SECONDS) -> None:
        """Stop the current workers through the coordinator (within ``timeout``), then the
        coordinator, the workers as first started (if it could not stop them, or was dead) and
        the placement groups."""
        try:
            if self.coordinator is None:
                raise RuntimeError("no coordinator yet")
            ray.get(self.coordinator.stop_workers.remote(), timeout=timeout)
        except Exception as exc:
            log.warning(
                "the coordinator of %s did not stop its workers (%s); stopping the ones started "
                "with it",
                self.spec.name,
                type(exc).__name__,
            )
        for actor in [self.coordinator, *self.trainers, *self.samplers]:
            if actor is None:
                continue
            try:
                ray.kill(actor)
            except Exception:
                log.debug("actor already gone")
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:
                log.debug("placement group already removed")


def _strategy(group: PlacementGroup | None, index: int) -> PlacementGroupSchedulingStrategy | None:
    if group is None:
        return None
    return PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=index
    )


@dataclass
class SamplerFactory:
    """Creates sampler replica ``index`` in its placement bundle; the coordinator keeps one to
    replace a replica that dies (the dead one's bundle is free again)."""

    model_dir: str
    config: SamplerConfig
    shm_dir: str
    site: StorageSite
    group: PlacementGroup | None

    def spawn(self, index: int) -> ActorHandle:
        from tinsmith.actors.sampler import SamplerWorker

        cfg = self.config
        return (
            cast(ActorHandle, ray.remote(SamplerWorker))
            .options(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                resources=cfg.resources,
                scheduling_strategy=_strategy(self.group, index),
                max_concurrency=1000,
            )
            .remote(index, self.model_dir, cfg, self.shm_dir, self.site)
        )


@dataclass
class TrainerFactory:
    """Creates a model's trainer ranks in their placement bundles, with a fresh torch.distributed
    rendezvous each time; the coordinator keeps one to restart every rank when one dies."""

    model_dir: str
    config: TrainerConfig
    site: StorageSite
    group: PlacementGroup | None

    def rendezvous(self) -> ray.ObjectRef[tuple[str, int]]:
        """Rank 0's node address and a free port there (an awaitable reference)."""
        return cast(
            "ray.ObjectRef[tuple[str, int]]",
            _rendezvous.options(scheduling_strategy=_strategy(self.group, 0)).remote(),
        )

    def spawn(self, master_addr: str, master_port: int) -> list[ActorHandle]:
        from tinsmith.actors.trainer import TrainerWorker

        cfg = self.config
        trainer_cls = ray.remote(TrainerWorker)
        return [
            cast(ActorHandle, trainer_cls)
            .options(
                num_cpus=cfg.num_cpus_per_rank,
                num_gpus=cfg.num_gpus_per_rank,
                resources=cfg.resources,
                scheduling_strategy=_strategy(self.group, rank),
                max_restarts=0,
            )
            .remote(rank, cfg.num_ranks, master_addr, master_port, self.model_dir, cfg, self.site)
            for rank in range(cfg.num_ranks)
        ]


def start_models(
    models: list[tuple[ModelSpec, Path, TrainerConfig, SamplerConfig]],
    shm_dir: str,
    site: StorageSite,
    actors: list[ModelActors],
) -> None:
    """Start every base model's placement groups, workers and coordinator. The workers of all
    models start together (a model's start is mostly its processes' imports and loads, which
    overlap well); each model is appended to ``actors`` as soon as it has workers, so that a
    later failure still stops them."""
    launched = [
        _launch(spec, model_dir, trainer_cfg, sampler_cfg, shm_dir, site, actors)
        for spec, model_dir, trainer_cfg, sampler_cfg in models
    ]
    for model, trainer_pings, _ in launched:
        _await_trainers(model, trainer_pings)
    ray.get([ref for _, _, sampler_starts in launched for ref in sampler_starts])
    for model, _, _ in launched:
        model.coordinator = model.connect()


RENDEZVOUS_ATTEMPTS = 3


def _await_trainers(model: ModelActors, pings: list[ObjectRef]) -> None:
    """Wait for a model's trainer ranks to be up. Rank 0 listens on the port `_rendezvous`
    found free before the ranks' processes started; while they import, Ray, gloo and vLLM bind
    ephemeral ports, and one can take it. Then the ranks start again on a fresh port."""
    assert model.factories is not None
    factory = model.factories[0]
    for attempt in range(1, RENDEZVOUS_ATTEMPTS + 1):
        try:
            ray.get(pings[0])  # rank 0 first: the others wait on its port
            ray.get(pings[1:])
            return
        except ray.exceptions.RayActorError as exc:
            if attempt == RENDEZVOUS_ATTEMPTS or "address already in use" not in str(exc):
                raise
        log.warning(
            "the trainer ranks of %s lost their rendezvous port to another process; starting "
            "them again on another (attempt %d of %d)",
            model.spec.name,
            attempt + 1,
            RENDEZVOUS_ATTEMPTS,
        )
        for rank in model.trainers:
            ray.kill(rank)
        model.trainers = factory.spawn(*ray.get(factory.rendezvous()))
        pings = [rank.ping.remote() for rank in model.trainers]


def _launch(
    spec: ModelSpec,
    model_dir: Path,
    trainer_cfg: TrainerConfig,
    sampler_cfg: SamplerConfig,
    shm_dir: str,
    site: StorageSite,
    actors: list[ModelActors],
) -> tuple[ModelActors, list[ObjectRef], list[ObjectRef]]:
    """Create one model's placement groups and workers; returns it, its ranks' readiness refs
    and its replicas'."""
    groups: list[PlacementGroup] = []
    t_cpus, t_gpus = trainer_cfg.num_cpus_per_rank, trainer_cfg.num_gpus_per_rank
    t_group: PlacementGroup | None = None
    if t_cpus or t_gpus or trainer_cfg.resources:
        bundle = _bundle(t_cpus, t_gpus, trainer_cfg.resources)
        t_group = placement_group([bundle] * trainer_cfg.num_ranks, strategy="PACK")
        ray.get(t_group.ready())
        groups.append(t_group)
    trainer_factory = TrainerFactory(str(model_dir), trainer_cfg, site, t_group)
    trainers = trainer_factory.spawn(*ray.get(trainer_factory.rendezvous()))

    s_cpus, s_gpus = sampler_cfg.num_cpus, sampler_cfg.num_gpus
    s_group: PlacementGroup | None = None
    if sampler_cfg.num_replicas and (s_cpus or s_gpus or sampler_cfg.resources):
        bundle = _bundle(s_cpus, s_gpus, sampler_cfg.resources)
        s_group = placement_group([bundle] * sampler_cfg.num_replicas, strategy="SPREAD")
        ray.get(s_group.ready())
        groups.append(s_group)
    factory = SamplerFactory(str(model_dir), sampler_cfg, shm_dir, site, s_group)
    samplers = [factory.spawn(i) for i in range(sampler_cfg.num_replicas)]
    model = ModelActors(
        spec=spec,
        coordinator=None,
        trainers=trainers,
        samplers=samplers,
        groups=groups,
        factories=(trainer_factory, factory),
        shape=read_model_shape(model_dir),
    )
    actors.append(model)
    return model, [t.ping.remote() for t in trainers], [s.start.remote() for s in samplers]
