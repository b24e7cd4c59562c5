"""HTTP routes for saving, loading, listing and downloading checkpoints and training runs.

Saves are training requests (they take a seq_id and run in order with the client's other
requests); listings and management calls are plain REST. See ``tinsmith.cluster.checkpoints``
for the visibility rules.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.checkpoints import KIND_BY_TYPE, check_name, expiry, parse_tinker_path
from tinsmith.cluster.futures import FutureResult
from tinsmith.cluster.server import (
    SamplerSession,
    ServedModel,
    ServerState,
    TrainingModel,
    json_result,
    refuse,
)
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.store.records import CheckpointRecord, RunRecord, run_to_wire, utcnow
from tinsmith.types.archives import safe_name
from tinsmith.types.checkpoints import (
    CheckpointArchiveUrlResponse,
    CheckpointsListResponse,
    Cursor,
    ExternalWeightsUrlsResponse,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoResponse,
)
from tinsmith.types.futures import UntypedAPIFuture
from tinsmith.types.internal import CheckpointMeta, SavedCheckpoint
from tinsmith.types.requests import (
    CheckpointTtlRequest,
    LoadWeightsRequest,
    SaveWeightsExternalRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsRequest,
    WeightsInfoRequest,
)
from tinsmith.types.training import (
    LoadWeightsResponse,
    SaveWeightsExternalResponse,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsResponse,
)

Kind = Literal["weights", "sampler_weights", "external_weights"]
_TYPE_BY_KIND = {v: k for k, v in KIND_BY_TYPE.items()}


def register_checkpoint_routes(app: FastAPI, state: ServerState) -> None:
    ckpts = state.checkpoints

    async def save(
        model: TrainingModel,
        served: ServedModel,
        seq_id: int | None,
        kind: Kind,
        name: str | None,
        ttl_seconds: int | None,
        overwrite: bool,
        user_metadata: dict[str, str] | None,
    ) -> CheckpointRecord:
        """Validate, write the archive through the coordinator (in seq_id order), then record it."""
        try:
            name = check_name(name)
            tinker_path = f"tinker://{model.model_id}/{kind}/{name}"
            expires_at = expiry(ttl_seconds)
            release = ckpts.reserve(tinker_path, overwrite)
        except UserInputError as exc:
            await refuse(served, model.model_id, seq_id, str(exc))
        try:
            ref = ckpts.new_ref(model.model_id, kind, name)
            meta = CheckpointMeta(kind=kind, base_model=model.base_model, lora=model.lora)
            saved = await served.coordinator.call(
                "save_checkpoint", model.model_id, seq_id, ref, meta, kind == "weights"
            )
            assert isinstance(saved, SavedCheckpoint)
            record = CheckpointRecord(
                training_run_id=model.model_id,
                checkpoint_id=f"{kind}/{name}",
                checkpoint_type=_TYPE_BY_KIND[kind],
                tinker_path=tinker_path,
                owner=model.owner,
                base_model=model.base_model,
                lora=model.lora,
                storage_key=saved.stored.key,
                size_bytes=saved.stored.size_bytes,
                sha256=saved.stored.sha256,
                step=saved.meta.step,
                has_optimizer=saved.meta.has_optimizer,
                expires_at=expires_at,
                user_metadata=user_metadata,
            )
            ckpts.commit(record, overwrite)
            state.store.touch_run(model.model_id, utcnow())
            return record
        finally:
            release()

    @app.post("/api/v1/save_weights")
    async def save_weights(body: SaveWeightsRequest, request: Request) -> UntypedAPIFuture:
        async def work() -> FutureResult:
            model = state.training_model(body.model_id)
            served = state.served(model.base_model)
            record = await save(
                model,
                served,
                body.seq_id,
                "weights",
                body.path,
                body.ttl_seconds,
                body.overwrite,
                body.user_metadata,
            )
            return json_result(SaveWeightsResponse(path=record.tinker_path))

        return state.submit(request, work, model_id=body.model_id)

    @app.post("/api/v1/save_weights_external")
    async def save_weights_external(
        body: SaveWeightsExternalRequest, request: Request
    ) -> UntypedAPIFuture:
        async def work() -> FutureResult:
            model = state.training_model(body.model_id)
            served = state.served(model.base_model)
            if body.age_encryption_recipients:
                message = "age_encryption_recipients is not supported by this server"
                await refuse(served, body.model_id, body.seq_id, message)
            record = await save(
                model,
                served,
                body.seq_id,
                "external_weights",
                body.path,
                body.ttl_seconds,
                True,
                None,
            )
            return json_result(
                SaveWeightsExternalResponse(path=record.tinker_path, size_bytes=record.size_bytes)
            )

        return state.submit(request, work, model_id=body.model_id)

    @app.post("/api/v1/save_weights_for_sampler")
    async def save_weights_for_sampler(
        body: SaveWeightsForSamplerRequest, request: Request
    ) -> UntypedAPIFuture:
        async def work() -> FutureResult:
            model = state.training_model(body.model_id)
            served = state.served(model.base_model)
            if body.path is not None:
                record = await save(
                    model,
                    served,
                    body.seq_id,
                    "sampler_weights",
                    body.path,
                    body.ttl_seconds,
                    False,
                    body.user_metadata,
                )
                return json_result(SaveWeightsForSamplerResponseInternal(path=record.tinker_path))
            if body.sampling_session_seq_id is None:
                message = "save_weights_for_sampler needs a path or a sampling_session_seq_id"
                await refuse(served, body.model_id, body.seq_id, message)
            # Ephemeral: the adapter goes through Ray's object store straight into the samplers.
            sampler_id = f"{model.session_id}:sample:{body.sampling_session_seq_id}"
            key = f"{body.model_id}@{body.seq_id}@{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            await served.coordinator.call("sync_to_samplers", body.model_id, body.seq_id, key)
            state.metrics.weight_sync.observe(time.perf_counter() - started)
            state.samplers[sampler_id] = SamplerSession(
                sampler_id, model.base_model, None, key, None, model.owner
            )
            return json_result(
                SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)
            )

        return state.submit(request, work, model_id=body.model_id)

    @app.post("/api/v1/load_weights")
    async def load_weights(body: LoadWeightsRequest, request: Request) -> UntypedAPIFuture:
        if body.model_id is not None:  # the older TrainingClient.load_state form
            return state.submit(request, lambda: _load_into_existing(body), model_id=body.model_id)
        if body.session_id is None or body.model_seq_id is None:
            raise UserInputError("load_weights needs session_id and model_seq_id (or model_id)")
        model_id = f"{body.session_id}:train:{body.model_seq_id}"
        state.check_session(body.session_id)

        async def work() -> FutureResult:
            record = _training_checkpoint(body.path)
            base_model = body.base_model or record.base_model
            if base_model != record.base_model:
                raise UserInputError(
                    f"base_model {base_model!r} differs from the checkpoint's base model {record.base_model!r}"
                )
            if body.optimizer_config is not None and body.optimizer_config.type != "adamw":
                raise UserInputError(
                    f"optimizer_config.type {body.optimizer_config.type!r} is not supported; use adamw"
                )
            served = state.served(base_model)
            if model_id in state.training:
                raise UserInputError(f"model {model_id!r} already exists (model_seq_id reused)")
            await served.coordinator.call(
                "create_from_checkpoint",
                model_id,
                record.lora,
                ckpts.ref_of(record),
                body.optimizer,
            )
            metadata = {k: str(v) for k, v in (body.user_metadata or {}).items()} or None
            state.add_training_model(
                TrainingModel(
                    model_id, body.session_id or "", base_model, record.lora, current_tenant()
                ),
                metadata,
            )
            return json_result(LoadWeightsResponse(path=body.path, model_id=model_id))

        return state.submit(request, work, model_id=model_id)

    async def _load_into_existing(body: LoadWeightsRequest) -> FutureResult:
        assert body.model_id is not None
        model = state.training_model(body.model_id)
        served = state.served(model.base_model)
        try:
            record = _training_checkpoint(body.path)
            if record.base_model != model.base_model:
                raise UserInputError(
                    f"path {body.path!r} is a checkpoint of {record.base_model!r}, not of {model.base_model!r}"
                )
            if record.lora != model.lora.model_copy(update={"seed": record.lora.seed}):
                raise UserInputError(
                    f"path {body.path!r} has LoRA config {record.lora.model_dump()} but this client has "
                    f"{model.lora.model_dump()}; create a new client from the state instead"
                )
        except (UserInputError, NotFoundError) as exc:
            await refuse(served, body.model_id, body.seq_id, str(exc))
        await served.coordinator.call(
            "load_checkpoint", body.model_id, body.seq_id, ckpts.ref_of(record), body.optimizer
        )
        return json_result(LoadWeightsResponse(path=body.path, model_id=body.model_id))

    def _training_checkpoint(path: str) -> CheckpointRecord:
        parsed = parse_tinker_path(path)
        if parsed.checkpoint_type != "training":
            raise UserInputError(
                f"path {path!r} is a {parsed.checkpoint_type} checkpoint; training state loads only from "
                "tinker://<run>/weights/<name> (save_state)"
            )
        return state.readable_checkpoint(path)

    @app.post("/api/v1/weights_info")
    async def weights_info(body: WeightsInfoRequest) -> WeightsInfoResponse:
        record = state.readable_checkpoint(body.tinker_path, field="tinker_path")
        return WeightsInfoResponse(
            base_model=record.base_model,
            is_lora=True,
            lora_rank=record.lora.rank,
            train_unembed=record.lora.train_unembed,
            train_mlp=record.lora.train_mlp,
            train_attn=record.lora.train_attn,
        )

    # ----- runs -------------------------------------------------------------------------------
    def _run_to_wire(run: RunRecord) -> TrainingRun:
        return run_to_wire(
            run,
            state.store.latest_checkpoint(run.training_run_id, "training"),
            state.store.latest_checkpoint(run.training_run_id, "sampler"),
        )

    @app.get("/api/v1/training_runs")
    async def list_training_runs(
        limit: int = Query(default=20, ge=1, le=1000),
        offset: int = Query(default=0, ge=0, le=2**62),
    ) -> TrainingRunsResponse:
        runs, total = state.store.list_runs(current_tenant(), limit, offset)
        return TrainingRunsResponse(
            training_runs=[_run_to_wire(r) for r in runs],
            cursor=Cursor(offset=offset, limit=limit, total_count=total),
        )

    @app.get("/api/v1/training_runs/{run_id}")
    async def get_training_run(run_id: str) -> TrainingRun:
        run = state.store.get_run(run_id)
        if run is None or run.owner != current_tenant():
            raise NotFoundError(f"training run {run_id!r} does not exist")
        return _run_to_wire(run)

    # ----- checkpoints ------------------------------------------------------------------------
    @app.get("/api/v1/training_runs/{run_id}/checkpoints")
    async def list_run_checkpoints(
        run_id: str,
        limit: int = Query(default=1000, ge=1, le=10000),
        offset: int = Query(default=0, ge=0, le=2**62),
    ) -> CheckpointsListResponse:
        run = state.store.get_run(run_id)
        if run is None or run.owner != current_tenant():
            raise NotFoundError(f"training run {run_id!r} does not exist")
        records, total = ckpts.list(run_id, current_tenant(), limit, offset)
        return CheckpointsListResponse(
            checkpoints=[r.to_wire() for r in records],
            cursor=Cursor(offset=offset, limit=limit, total_count=total),
        )

    @app.get("/api/v1/checkpoints")
    async def list_user_checkpoints(
        limit: int = Query(default=100, ge=1, le=10000),
        offset: int = Query(default=0, ge=0, le=2**62),
    ) -> CheckpointsListResponse:
        records, total = ckpts.list(None, current_tenant(), limit, offset)
        return CheckpointsListResponse(
            checkpoints=[r.to_wire() for r in records],
            cursor=Cursor(offset=offset, limit=limit, total_count=total),
        )

    @app.delete("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}")
    async def delete_checkpoint(run_id: str, kind: Kind, name: str) -> dict[str, str]:
        ckpts.delete(state.owned_checkpoint(run_id, kind, name))
        return {"status": "deleted"}

    @app.post("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/publish")
    async def publish(run_id: str, kind: Kind, name: str) -> dict[str, str]:
        ckpts.set_public(state.owned_checkpoint(run_id, kind, name), True)
        return {"status": "published"}

    @app.delete("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/publish")
    async def unpublish(run_id: str, kind: Kind, name: str) -> dict[str, str]:
        ckpts.set_public(state.owned_checkpoint(run_id, kind, name), False)
        return {"status": "unpublished"}

    @app.put("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/ttl")
    async def set_ttl(
        run_id: str, kind: Kind, name: str, body: CheckpointTtlRequest
    ) -> dict[str, str]:
        ckpts.set_ttl(state.owned_checkpoint(run_id, kind, name), body.ttl_seconds)
        return {"status": "ok"}

    @app.get("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls")
    async def external_weights_urls(
        run_id: str, kind: Kind, name: str, request: Request
    ) -> ExternalWeightsUrlsResponse:
        record = state.readable_checkpoint(f"tinker://{run_id}/{kind}/{name}", field="checkpoint")
        if kind == "sampler_weights":
            raise UserInputError(
                "sampler checkpoints cannot be downloaded; save_state() or save_weights_external()"
            )
        expires = utcnow() + dt.timedelta(seconds=state.storage_config.url_expiry_seconds)
        files = await _files_of(record)
        base = str(request.base_url).rstrip("/")
        urls = {f: f"{base}/api/v1/tinsmith/files/{ckpts.sign(record, f, expires)}" for f in files}
        return ExternalWeightsUrlsResponse(urls=urls, expires=expires)

    @app.get("/api/v1/training_runs/{run_id}/checkpoints/{kind}/{name}/archive")
    async def archive_url(
        run_id: str, kind: Kind, name: str, request: Request
    ) -> CheckpointArchiveUrlResponse:
        """One-file download of the whole archive: a presigned S3 URL, or one this server answers."""
        record = state.readable_checkpoint(f"tinker://{run_id}/{kind}/{name}", field="checkpoint")
        seconds = state.storage_config.url_expiry_seconds
        expires = utcnow() + dt.timedelta(seconds=seconds)
        url = ckpts.storage.download_url(record.storage_key, seconds)
        if url is None:
            url = f"{str(request.base_url).rstrip('/')}/api/v1/tinsmith/files/{ckpts.sign(record, None, expires)}"
        return CheckpointArchiveUrlResponse(url=url, expires=expires)

    @app.get("/api/v1/tinsmith/files/{token}")
    async def download_file(token: str) -> FileResponse:
        """Signed download links (no API key: the token is the credential, like a presigned URL)."""
        import asyncio

        from tinsmith.storage.transfer import fetch_dir

        record, filename = ckpts.verify(token)
        if filename is None:
            local = ckpts.storage.local_path(record.storage_key)
            if local is None:
                raise NotFoundError("archive is not stored on this server")
            return FileResponse(local, filename=f"{safe_name(record.checkpoint_id)}.tar")
        directory = await asyncio.to_thread(fetch_dir, ckpts.site, ckpts.ref_of(record))
        path = (directory / filename).resolve()
        if not path.is_file() or not path.is_relative_to(directory.resolve()):
            raise NotFoundError(f"{filename!r} is not a file of {record.tinker_path}")
        return FileResponse(path, filename=path.name)

    async def _files_of(record: CheckpointRecord) -> list[str]:
        import asyncio

        from tinsmith.storage.transfer import fetch_dir

        directory = await asyncio.to_thread(fetch_dir, ckpts.site, ckpts.ref_of(record))
        return sorted(
            p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()
        )
