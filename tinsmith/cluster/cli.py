"""The `tinsmith` command line: parse, build, run, and tear down in ``finally``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tinsmith.cluster.config import ClusterConfig, load_config
from tinsmith.cluster.metrics import RequestIdFilter
from tinsmith.errors import ConfigurationError
from tinsmith.storage.base import StorageError

if TYPE_CHECKING:
    from tinsmith.cluster.placement import ModelActors
    from tinsmith.cluster.state import ServedModel
    from tinsmith.storage.transfer import StorageSite
    from tinsmith.store.sqlite import SQLiteStore

log = logging.getLogger("tinsmith")


def _init_ray(config: ClusterConfig) -> bool:
    """Join RAY_ADDRESS if set, else start a private local cluster; True if we started it."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return False
    kwargs: dict[str, object] = {"include_dashboard": False, "log_to_driver": True}
    if config.ray_num_cpus is not None:
        kwargs["num_cpus"] = config.ray_num_cpus
    temp_dir = os.environ.get("TINSMITH_RAY_TEMP_DIR")
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    ray.init(**kwargs)  # type: ignore[arg-type]
    return True


def _import_driver_modules() -> None:
    """Import, before connecting to Ray, every tinsmith module this driver loads lazily later.

    Under `ray job submit --working-dir`, Ray has been seen to unpack the working_dir package a
    second time, into the same directory, just after the driver connects (for the job's workers):
    an import during those milliseconds found half a package (ModuleNotFoundError). Modules already
    imported are not affected.
    """
    import tinsmith.actors.coordinator
    import tinsmith.actors.sampler
    import tinsmith.actors.trainer
    import tinsmith.cluster.coordinator_handle
    import tinsmith.storage.transfer  # noqa: F401


def serve(config: ClusterConfig, host: str, port: int) -> None:
    """Prepare the models, start Ray and every model's actors, and serve the API until stopped."""
    import ray
    import uvicorn

    from tinsmith.cluster.checkpoints import open_checkpoint_service
    from tinsmith.cluster.images import ImageSource
    from tinsmith.cluster.model_cache import prepare_all
    from tinsmith.cluster.placement import check_capacity
    from tinsmith.cluster.server import ServerState, build_app

    _import_driver_modules()
    listener = bind_listener(host, port)  # before minutes of start-up: a taken port fails now
    model_dirs = prepare_all(config)
    data_dir = config.resolved_data_dir()
    # Before Ray: a bad bucket fails fast.
    checkpoints = open_checkpoint_service(config.storage, data_dir)
    started = _init_ray(config)
    if not config.ray_autoscaling:
        try:
            check_capacity(config, ray.cluster_resources())
        except ConfigurationError:
            if started:
                ray.shutdown()
            raise
    shm_dir = Path(config.shm_dir) / f"tinsmith-{os.getpid()}"
    shm_dir.mkdir(parents=True, exist_ok=True)
    actors: list[ModelActors] = []
    try:
        state = ServerState(
            models=_start_models(config, model_dirs, str(shm_dir), checkpoints.site, actors),
            checkpoints=checkpoints,
            reaper_seconds=config.checkpoint_reaper_seconds,
            auth=config.auth,
            limits=config.limits,
            images=ImageSource(config.images, checkpoints.storage_reader()),
        )
        _log_auth(config)
        log.info("tinsmith serving on http://%s:%d", host, port)
        print(f"tinsmith: ready on http://{host}:{port}", flush=True)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(state), host=host, port=port, log_level="warning", timeout_keep_alive=75
            )
        )
        server.run(sockets=[listener])
    finally:
        listener.close()
        for model in actors:
            model.shutdown()
        shutil.rmtree(shm_dir, ignore_errors=True)
        checkpoints.store.close()
        if started:
            ray.shutdown()


def bind_listener(host: str, port: int) -> socket.socket:
    """The API's socket, bound (not yet listening: clients are refused, not left hanging, until
    the server is ready). Bound first thing, so that neither a port another process holds nor one
    that Ray or vLLM takes while the models start surfaces only after the start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(False)
    return sock


def _start_models(
    config: ClusterConfig,
    model_dirs: dict[str, Path],
    shm_dir: str,
    site: StorageSite,
    actors: list[ModelActors],
) -> dict[str, ServedModel]:
    """Start every configured model's actors, all together (each appended to ``actors`` as soon
    as it has workers, so a later failure still shuts it down), and describe each for the
    server."""
    from tinsmith.actors.image_inputs import ImageProcessor
    from tinsmith.cluster.coordinator_handle import RayCoordinatorHandle
    from tinsmith.cluster.placement import start_models
    from tinsmith.cluster.state import ServedModel

    plan = [
        (spec, model_dirs[spec.name], config.trainer_for(spec), config.sampler_for(spec))
        for spec in config.models
    ]
    start_models(plan, shm_dir, site, actors)
    served: dict[str, ServedModel] = {}
    for (spec, model_dir, _, sampler_cfg), started in zip(plan, actors, strict=True):
        assert started.coordinator is not None and started.shape is not None
        shape = started.shape
        served[spec.name] = ServedModel(
            name=spec.name,
            model_dir=model_dir,
            max_context_length=min(spec.max_context_length, sampler_cfg.max_model_len),
            coordinator=RayCoordinatorHandle(started.coordinator),
            vocab_size=shape.vocab_size,
            arch=shape.arch,
            sampleable=sampler_cfg.num_replicas > 0,
            max_lora_rank=sampler_cfg.max_lora_rank,
            image_token_id=shape.image_token_id,
            image_tokens=ImageProcessor(model_dir) if shape.arch.vision else None,
        )
        log.info("model %s ready from %s", spec.name, model_dir)
    return served


def _log_auth(config: ClusterConfig) -> None:
    if config.auth.mode == "open":
        log.warning(
            "auth: OPEN mode - any 'tml-' API key is accepted and all clients share one tenant"
        )
    else:
        log.info(
            "auth: API keys required (%s, $%s, tinsmith keys create)",
            config.auth.keys_file,
            config.auth.keys_env,
        )


def create_key(config: ClusterConfig, tenant: str) -> str:
    """A new API key for ``tenant``, stored (hashed) in the store the config's server uses."""
    from tinsmith.cluster.auth import check_tenant, hash_key, new_key

    check_tenant(tenant, "--tenant")
    store = _open_store(config)
    try:
        key = new_key()
        store.add_api_key(hash_key(key), tenant)
    finally:
        store.close()
    if config.auth.mode == "open":
        print(
            "note: this config's auth.mode is open, so the server accepts any tml- key",
            file=sys.stderr,
        )
    return key


def revoke_keys(config: ClusterConfig, key: str | None, tenant: str | None) -> int:
    """Revoke one stored key, or every stored key of a tenant; returns how many. The running
    server refuses them from its next request (it looks stored keys up on every request). Keys
    from a keys file or the environment are revoked by removing them there and restarting."""
    from tinsmith.cluster.auth import hash_key

    if (key is None) == (tenant is None):
        raise ConfigurationError("keys revoke: give exactly one of --key and --tenant")
    store = _open_store(config)
    try:
        return store.revoke_api_keys(
            key_hash=hash_key(key) if key is not None else None, tenant=tenant
        )
    finally:
        store.close()


def _open_store(config: ClusterConfig) -> SQLiteStore:
    from tinsmith.store.sqlite import SQLiteStore

    data_dir = config.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(data_dir / "tinsmith.db")


def main(argv: list[str] | None = None) -> int:
    """The ``tinsmith`` command (``serve``, ``prepare``, ``keys create|revoke``); returns the exit
    code."""
    parser = argparse.ArgumentParser(
        prog="tinsmith", description="Tinker-compatible fine-tuning on Ray"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="start the cluster and the API server")
    p_serve.add_argument("--config", default="configs/local.yaml", help="cluster config YAML")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_prep = sub.add_parser("prepare", help="prepare the configured models into the local cache")
    p_prep.add_argument("--config", default="configs/local.yaml")
    p_keys = sub.add_parser("keys", help="manage API keys of the server that runs with a config")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser(
        "create", help="create a key for a tenant and print it (shown only once)"
    )
    p_create.add_argument("--config", default="configs/local.yaml")
    p_create.add_argument("--tenant", required=True)
    p_revoke = keys_sub.add_parser(
        "revoke", help="revoke a key (--key) or every key of a tenant (--tenant) made by create"
    )
    p_revoke.add_argument("--config", default="configs/local.yaml")
    p_revoke.add_argument("--key", help="the key to revoke (tml-...)")
    p_revoke.add_argument("--tenant", help="revoke every stored key of this tenant")
    args = parser.parse_args(argv)
    # What tinsmith writes (database, signing key, archives, shared memory, logs) is private.
    os.umask(0o077)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s [%(request_id)s] %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    try:
        config = load_config(args.config)
        if args.command == "serve":
            serve(config, args.host, args.port)
        elif args.command == "keys" and args.keys_command == "create":
            print(create_key(config, args.tenant))
        elif args.command == "keys":
            revoked = revoke_keys(config, args.key, args.tenant)
            print(f"revoked {revoked} key(s)")
            if not revoked:
                return 1
        elif args.command == "prepare":
            from tinsmith.cluster.model_cache import prepare_all

            for name, path in prepare_all(config).items():
                print(f"{name}: {path}")
    except (ConfigurationError, StorageError) as exc:
        print(f"tinsmith: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
