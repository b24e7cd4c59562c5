"""The HTTP API server: Tinker's wire protocol in front of the coordinators.

It validates requests, records a future for every mutating call and returns its request id at
once; the work runs on the coordinator actor of the request's base model. Only this module maps
errors to HTTP status codes and future failure categories.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tinsmith.cluster.auth import KeyRing, current_tenant
from tinsmith.cluster.checkpoints import CheckpointService, parse_tinker_path
from tinsmith.cluster.config import AuthConfig, LimitsConfig
from tinsmith.cluster.futures import FutureResult, FutureStore, failure, interrupted_failure
from tinsmith.cluster.limits import BodyLimit, check_forward_backward
from tinsmith.cluster.metrics import ServerMetrics
from tinsmith.errors import (
    ConflictError,
    NotFoundError,
    TinsmithError,
    TooLargeError,
    TooManyRequestsError,
    UserInputError,
)
from tinsmith.storage.config import StorageConfig
from tinsmith.store.base import MetadataStore
from tinsmith.store.records import CheckpointRecord, RunRecord
from tinsmith.types import proto
from tinsmith.types.checkpoints import (
    GetServerCapabilitiesResponse,
    SupportedModel,
)
from tinsmith.types.futures import (
    FutureRetrieveRequest,
    RequestErrorCategory,
    TryAgainResponse,
    UntypedAPIFuture,
)
from tinsmith.types.internal import AdapterSource, ModelStatus, SampleWork
from tinsmith.types.requests import (
    ClientConfigResponse,
    ClientDynamicConfigResponse,
    CreateModelRequest,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    GetInfoRequest,
    HealthResponse,
    OptimStepRequest,
    SampleRequest,
    SessionHeartbeatRequest,
    SessionHeartbeatResponse,
    UnloadModelRequest,
)
from tinsmith.types.sampling import GetSamplerResponse, SampleResponse
from tinsmith.types.training import (
    AdamParams,
    CreateModelResponse,
    ForwardBackwardOutput,
    GetInfoResponse,
    LoraConfig,
    ModelData,
    OptimStepResponse,
    UnloadModelResponse,
)

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 30.0
MAX_NUM_SAMPLES = 128  # per request; more rollouts go in more requests
MAX_TOPK_LOGPROBS = 20  # vLLM's default max_logprobs
MAX_BODY_BYTES = 256 << 20  # a decompressed forward_backward body


class CoordinatorClient(Protocol):
    """What the server needs of a coordinator: awaitable calls returning tinsmith types."""

    def call(self, method: str, *args: object) -> Awaitable[object]: ...


@dataclass
class ServedModel:
    name: str
    model_dir: Path
    max_context_length: int
    coordinator: CoordinatorClient
    vocab_size: int
    max_lora_rank: int = 512
    trainable: bool = True
    sampleable: bool = True


@dataclass
class TrainingModel:
    model_id: str
    session_id: str
    base_model: str
    lora: LoraConfig
    owner: str


@dataclass
class SamplerSession:
    sampler_id: str
    base_model: str
    model_path: str | None
    adapter_key: str | None
    source: AdapterSource | None
    owner: str


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    data_dir: Path
    checkpoints: CheckpointService
    futures: FutureStore = field(init=False)
    sessions: dict[str, float] = field(default_factory=dict)
    training: dict[str, TrainingModel] = field(default_factory=dict)
    samplers: dict[str, SamplerSession] = field(default_factory=dict)
    reaper_seconds: float = 60.0
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        # Futures live in the metadata store too. Any still pending there belong to a previous
        # process (this one has submitted none yet): they fail, retryably, instead of hanging.
        interrupted = self.store.interrupt_pending_futures(interrupted_failure())
        if interrupted:
            log.warning(
                "%d requests were in flight when the server last stopped; they now fail",
                interrupted,
            )
        self.futures = FutureStore(
            self.store, max_pending_per_owner=self.limits.max_pending_per_tenant
        )

    @property
    def store(self) -> MetadataStore:
        return self.checkpoints.store

    @property
    def storage_config(self) -> StorageConfig:
        return self.checkpoints.storage_config

    def submit(
        self,
        request: Request,
        work: Callable[[], Awaitable[FutureResult]],
        model_id: str | None = None,
        n_samples: int = 0,
        base_model: str | None = None,
    ) -> UntypedAPIFuture:
        """Start ``work`` as a future, unless the SDK's idempotency key names one already started."""
        key = request.headers.get("x-idempotency-key")
        route = getattr(request.scope.get("route"), "path", request.url.path)
        kind = route.rsplit("/", 1)[-1]
        if base_model is None and model_id is not None and model_id in self.training:
            base_model = self.training[model_id].base_model

        async def observed() -> FutureResult:
            started = time.perf_counter()
            depth = self.metrics.queue_depth.labels(base_model or "-")
            depth.inc()
            try:
                result = await _guard(work())
            finally:
                depth.dec()
            outcome = "failed" if result.failed else "ok"
            self.metrics.futures.labels(kind, outcome).inc()
            self.metrics.future_seconds.labels(kind).observe(time.perf_counter() - started)
            return result

        request_id, _ = self.futures.submit(observed, idempotency_key=key, owner=current_tenant())
        seq_ids = [f"{request_id}:{i}" for i in range(n_samples)] if n_samples else None
        return UntypedAPIFuture(
            request_id=request_id, model_id=model_id, sample_sequence_ids=seq_ids
        )

    def add_training_model(
        self, model: TrainingModel, user_metadata: dict[str, str] | None
    ) -> None:
        """Register a live training client and record its training run."""
        self.training[model.model_id] = model
        self.count_training_clients()
        self.store.put_run(
            RunRecord(
                training_run_id=model.model_id,
                session_id=model.session_id,
                base_model=model.base_model,
                owner=model.owner,
                lora=model.lora,
                user_metadata=user_metadata,
            )
        )

    def count_training_clients(self) -> None:
        for name in self.models:
            live = sum(1 for m in self.training.values() if m.base_model == name)
            self.metrics.training_clients.labels(name).set(live)

    def readable_checkpoint(self, tinker_path: str, field: str = "path") -> CheckpointRecord:
        """A checkpoint the caller may read or load: its own, or a published one."""
        record = self.checkpoints.resolve(tinker_path, field)
        if record.owner != current_tenant() and not record.public:
            raise NotFoundError(f"{field}: checkpoint {tinker_path!r} does not exist")
        return record

    def owned_checkpoint(self, run_id: str, kind: str, name: str) -> CheckpointRecord:
        """A checkpoint the caller may change or delete (only its own)."""
        record = self.checkpoints.by_route(run_id, kind, name)
        if record.owner != current_tenant():
            raise NotFoundError(f"checkpoint tinker://{run_id}/{kind}/{name} does not exist")
        return record

    def served(self, base_model: str) -> ServedModel:
        model = self.models.get(base_model)
        if model is None:
            raise UserInputError(
                f"base_model {base_model!r} is not served here; available: {', '.join(sorted(self.models))}"
            )
        return model

    def training_model(self, model_id: str) -> TrainingModel:
        """The caller's live training client (another tenant's answers as unknown)."""
        model = self.training.get(model_id)
        if model is None or model.owner != current_tenant():
            raise NotFoundError(f"model_id {model_id!r} is unknown")
        return model

    def sampler(self, sampler_id: str) -> SamplerSession:
        session = self.samplers.get(sampler_id)
        if session is None or session.owner != current_tenant():
            raise NotFoundError(f"sampling_session_id {sampler_id!r} is unknown")
        return session

    def check_session(self, session_id: str) -> None:
        """A session of another tenant answers as unknown (ids of unknown sessions pass: the
        SDK always creates its session first, and ids are random)."""
        owner = self.store.session_owner(session_id)
        if owner is not None and owner != current_tenant():
            raise NotFoundError(f"session_id {session_id!r} is unknown")


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps actor exceptions; the cause carries the category."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _category(exc: BaseException) -> RequestErrorCategory:
    return (
        RequestErrorCategory.USER
        if isinstance(exc, UserInputError | NotFoundError)
        else RequestErrorCategory.SERVER
    )


def json_result(model: object) -> FutureResult:
    from pydantic import BaseModel

    assert isinstance(model, BaseModel)
    return FutureResult(kind="json", body=model.model_dump_json(exclude_none=True).encode())


async def _guard(work: Awaitable[FutureResult]) -> FutureResult:
    """Turn any exception into a failed future (user or server category) instead of a crash."""
    try:
        return await work
    except Exception as raw:
        exc = _unwrap(raw)
        category = _category(exc)
        if category == RequestErrorCategory.SERVER:
            log.error("request failed: %s", "".join(traceback.format_exception(raw))[-4000:])
        message = str(exc) if isinstance(exc, TinsmithError) else f"{type(exc).__name__}: {exc}"
        return failure(message, category)


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_forever(state))
        try:
            yield
        finally:
            reaper.cancel()

    app = FastAPI(title="tinsmith", version="0.1.0", lifespan=lifespan)
    KeyRing(state.auth, state.store.tenant_for_key).install(app)
    app.add_middleware(BodyLimit, max_bytes=state.limits.max_body_bytes)
    state.metrics.install(app)  # added last, so it runs first: refused requests are counted too

    @app.exception_handler(UserInputError)
    async def _user_error(_: Request, exc: UserInputError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(TooLargeError)
    async def _too_large(_: Request, exc: TooLargeError) -> JSONResponse:
        return JSONResponse(status_code=413, content={"detail": str(exc)})

    @app.exception_handler(TooManyRequestsError)
    async def _too_many(_: Request, exc: TooManyRequestsError) -> JSONResponse:
        return JSONResponse(
            status_code=429, content={"detail": str(exc)}, headers={"Retry-After": "1"}
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """Where and why only: echoing the refused input can fail to encode (NaN, bad UTF-8)."""
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    submit = state.submit

    # ----- handshake and sessions ------------------------------------------------------------
    @app.post("/api/v1/client/config")
    async def client_config() -> ClientConfigResponse:
        limits = state.limits
        return ClientConfigResponse(
            fwdbwd_max_chunk_len=limits.max_datums_per_request,
            fwdbwd_max_chunk_bytes_count=min(5_000_000, limits.max_body_bytes // 2),
        )

    @app.post("/api/v1/client/dynamic_config")
    async def dynamic_config() -> ClientDynamicConfigResponse:
        return ClientDynamicConfigResponse()

    @app.get("/api/v1/healthz")
    async def healthz() -> HealthResponse:
        return HealthResponse()

    @app.post("/api/v1/create_session")
    async def create_session(body: CreateSessionRequest) -> CreateSessionResponse:
        session_id = f"sess-{uuid.uuid4().hex[:12]}"
        state.store.add_session(session_id, current_tenant())
        state.sessions[session_id] = time.time()
        return CreateSessionResponse(session_id=session_id)

    @app.post("/api/v1/session_heartbeat")
    async def heartbeat(body: SessionHeartbeatRequest) -> SessionHeartbeatResponse:
        if state.store.session_owner(body.session_id) != current_tenant():
            raise HTTPException(
                status_code=404, detail=f"session_id {body.session_id!r} is unknown"
            )
        state.sessions[body.session_id] = time.time()
        return SessionHeartbeatResponse()

    @app.post("/api/v1/sessions/{session_id}/finish")
    async def finish_session(session_id: str) -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/telemetry")
    async def telemetry() -> dict[str, str]:
        return {"status": "accepted"}

    @app.get("/api/v1/get_server_capabilities")
    async def capabilities() -> GetServerCapabilitiesResponse:
        return GetServerCapabilitiesResponse(
            supported_models=[
                SupportedModel(
                    model_name=m.name,
                    max_context_length=m.max_context_length,
                    trainable=m.trainable,
                    sampleable=m.sampleable,
                )
                for m in state.models.values()
            ]
        )

    # ----- training ----------------------------------------------------------------------
    @app.post("/api/v1/create_model")
    async def create_model(body: CreateModelRequest, request: Request) -> UntypedAPIFuture:
        model_id = f"{body.session_id}:train:{body.model_seq_id}"
        state.check_session(body.session_id)

        async def work() -> FutureResult:
            served = state.served(body.base_model)
            if body.optimizer_config.type != "adamw":
                raise UserInputError(
                    f"optimizer_config.type {body.optimizer_config.type!r} is not supported; use adamw"
                )
            lora = body.lora_config or LoraConfig(rank=32)
            if served.sampleable and lora.rank > served.max_lora_rank:
                raise UserInputError(
                    f"lora_config.rank {lora.rank} is larger than this server's sampler limit "
                    f"({served.max_lora_rank}, sampler.max_lora_rank in the config)"
                )
            if model_id in state.training:
                raise UserInputError(f"model {model_id!r} already exists (model_seq_id reused)")
            await served.coordinator.call("create_model", model_id, lora)
            state.add_training_model(
                TrainingModel(model_id, body.session_id, body.base_model, lora, current_tenant()),
                {k: str(v) for k, v in body.user_metadata.items()} if body.user_metadata else None,
            )
            return json_result(CreateModelResponse(model_id=model_id))

        return submit(request, work, model_id=model_id)

    @app.post("/api/v1/get_info")
    async def get_info(body: GetInfoRequest) -> GetInfoResponse:
        model = state.training_model(body.model_id)
        served = state.served(model.base_model)
        return GetInfoResponse(
            model_id=model.model_id,
            model_data=ModelData(
                arch="llama", model_name=model.base_model, tokenizer_id=str(served.model_dir)
            ),
            is_lora=True,
            lora_rank=model.lora.rank,
            model_name=model.base_model,
        )

    @app.post("/api/v1/unload_model")
    async def unload_model(body: UnloadModelRequest, request: Request) -> UntypedAPIFuture:
        async def work() -> FutureResult:
            model = state.training_model(body.model_id)
            await state.served(model.base_model).coordinator.call("unload_model", body.model_id)
            del state.training[body.model_id]
            state.count_training_clients()
            return json_result(UnloadModelResponse(model_id=body.model_id))

        return submit(request, work, model_id=body.model_id)

    @app.post("/api/v1/forward_backward")
    async def forward_backward(request: Request) -> UntypedAPIFuture:
        raw = await request.body()
        if request.headers.get("content-encoding", "") == "zstd":
            raw = _unzstd(raw)
        try:
            fb = proto.decode_forward_backward_request(raw)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        check_forward_backward(fb.forward_backward_input, state.limits)

        async def work() -> FutureResult:
            model = state.training_model(fb.model_id)
            served = state.served(model.base_model)
            out = await served.coordinator.call(
                "forward_backward",
                fb.model_id,
                fb.seq_id,
                fb.forward_backward_input,
                fb.forward_only,
            )
            assert isinstance(out, ForwardBackwardOutput)
            state.metrics.train_tokens.labels(model.base_model).inc(
                out.metrics.get("num_tokens:sum", 0.0)
            )
            return FutureResult(kind="proto", body=proto.encode_forward_backward_output(out))

        return submit(request, work, model_id=fb.model_id)

    @app.post("/api/v1/optim_step")
    async def optim_step(body: OptimStepRequest, request: Request) -> UntypedAPIFuture:
        async def work() -> FutureResult:
            model = state.training_model(body.model_id)
            served = state.served(model.base_model)
            if body.optimizer_params is not None:
                message = "optimizer_params (dimuon) is not supported; send adam_params"
                await refuse(served, body.model_id, body.seq_id, message)
            adam = body.adam_params or AdamParams()
            metrics = await served.coordinator.call("optim_step", body.model_id, body.seq_id, adam)
            assert isinstance(metrics, dict)
            return json_result(OptimStepResponse(metrics=metrics))

        return submit(request, work, model_id=body.model_id)

    # ----- sampling ----------------------------------------------------------------------
    @app.post("/api/v1/create_sampling_session")
    async def create_sampling_session(
        body: CreateSamplingSessionRequest,
    ) -> CreateSamplingSessionResponse:
        sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"
        if body.model_path is not None:
            session = _checkpoint_sampler(state, body.model_path, sampler_id)
            state.samplers[sampler_id] = session
        elif body.base_model is not None:
            state.served(body.base_model)
            state.samplers[sampler_id] = SamplerSession(
                sampler_id, body.base_model, None, None, None, current_tenant()
            )
        else:
            raise UserInputError("create_sampling_session needs model_path or base_model")
        return CreateSamplingSessionResponse(sampling_session_id=sampler_id)

    @app.get("/api/v1/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> GetSamplerResponse:
        session = state.sampler(sampler_id)
        return GetSamplerResponse(
            sampler_id=sampler_id, base_model=session.base_model, model_path=session.model_path
        )

    @app.post("/api/v1/asample")
    async def asample(body: SampleRequest, request: Request) -> UntypedAPIFuture:
        session = _sampler_for(state, body)
        served = state.served(session.base_model)
        work_item = _sample_work(body, session, served.max_context_length, served.vocab_size)

        async def work() -> FutureResult:
            out = await served.coordinator.call("sample", work_item, session.source)
            assert isinstance(out, SampleResponse)
            state.metrics.sampled_tokens.labels(session.base_model).inc(
                sum(len(q.tokens) for q in out.sequences)
            )
            return FutureResult(kind="proto", body=proto.encode_sample_response(out))

        return submit(request, work, n_samples=body.num_samples, base_model=session.base_model)

    # ----- tinsmith's own (not part of Tinker's protocol) ------------------------------------
    @app.get("/api/v1/tinsmith/status")
    async def status() -> list[ModelStatus]:
        """Per base model: its training clients and each worker's memory and adapters."""
        out: list[ModelStatus] = []
        for served in state.models.values():
            result = await served.coordinator.call("status")
            assert isinstance(result, ModelStatus)
            out.append(result)
        return out

    # ----- futures -------------------------------------------------------------------------
    @app.post("/api/v1/retrieve_future")
    async def retrieve_future(body: FutureRetrieveRequest) -> Response:
        result = await state.futures.retrieve(body.request_id, LONG_POLL_SECONDS, current_tenant())
        if result is None:
            pending = TryAgainResponse(request_id=body.request_id)
            return Response(content=pending.model_dump_json(), media_type="application/json")
        media = "application/x-protobuf" if result.kind == "proto" else "application/json"
        return Response(content=result.body, media_type=media)

    from tinsmith.cluster.checkpoint_routes import register_checkpoint_routes

    register_checkpoint_routes(app, state)
    return app


def _unzstd(raw: bytes) -> bytes:
    """Decompress a zstd request body, refusing garbage (400) and bombs (413) before allocating."""
    import zstandard

    try:
        if zstandard.frame_content_size(raw) > MAX_BODY_BYTES:  # -1 when the header does not say
            raise HTTPException(
                status_code=413, detail=f"body decompresses to over {MAX_BODY_BYTES} bytes"
            )
        return zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_BODY_BYTES)
    except zstandard.ZstdError as exc:
        raise HTTPException(status_code=400, detail=f"body is not valid zstd data: {exc}") from exc


async def _reap_forever(state: ServerState) -> None:
    """Delete expired checkpoints in the background (listings also hide them at once)."""
    while True:
        await asyncio.sleep(state.reaper_seconds)
        try:
            await asyncio.to_thread(state.checkpoints.reap)
        except Exception:
            log.exception("checkpoint reaper failed; will retry")


async def refuse(served: ServedModel, model_id: str, seq_id: int | None, message: str) -> NoReturn:
    """Fail a training request the server answers itself; its seq_id is still consumed, in order,
    so the client's later requests are not left waiting for it."""
    await served.coordinator.call("skip_seq", model_id, seq_id)
    raise UserInputError(message)


def _sampler_for(state: ServerState, body: SampleRequest) -> SamplerSession:
    if body.sampling_session_id is not None:
        return state.sampler(body.sampling_session_id)
    if body.model_path is not None:
        return _checkpoint_sampler(state, body.model_path, "")
    if body.base_model is not None:
        state.served(body.base_model)
        return SamplerSession("", body.base_model, None, None, None, current_tenant())
    raise UserInputError("asample needs sampling_session_id, model_path or base_model")


def _checkpoint_sampler(state: ServerState, model_path: str, sampler_id: str) -> SamplerSession:
    """Sampling from a stored checkpoint (sampler_weights, or the adapter inside weights).

    The adapter key includes the archive's hash, so an overwritten checkpoint is a new adapter
    to vLLM rather than a stale cached one.
    """
    parsed = parse_tinker_path(model_path, "model_path")
    if parsed.checkpoint_type == "external":
        raise UserInputError(
            f"model_path {model_path!r}: sample from sampler_weights or weights checkpoints"
        )
    record = state.readable_checkpoint(model_path, field="model_path")
    source = AdapterSource(archive=state.checkpoints.ref_of(record))
    key = f"{model_path}@{record.sha256[:12]}"
    return SamplerSession(sampler_id, record.base_model, model_path, key, source, current_tenant())


def _sample_work(
    body: SampleRequest, session: SamplerSession, max_context: int, vocab_size: int
) -> SampleWork:
    """Validate a sample request against the model's limits; errors name the field."""
    try:
        tokens = body.prompt.to_ints()
    except ValueError as exc:
        raise UserInputError(f"prompt: {exc}") from exc
    params = body.sampling_params
    if not tokens:
        raise UserInputError("prompt is empty")
    for pos, tok in enumerate(tokens):
        if not 0 <= tok < vocab_size:
            raise UserInputError(
                f"prompt token [{pos}] = {tok} is outside the vocabulary (0..{vocab_size - 1})"
            )
    if len(tokens) >= max_context:
        raise UserInputError(
            f"prompt has {len(tokens)} tokens; the model's context is {max_context}"
        )
    if not 1 <= body.num_samples <= MAX_NUM_SAMPLES:
        raise UserInputError(f"num_samples must be in 1..{MAX_NUM_SAMPLES}, got {body.num_samples}")
    for name in ("topk_prompt_logprobs", "topk_sample_logprobs"):
        k = getattr(body, name)
        if not 0 <= k <= MAX_TOPK_LOGPROBS:
            raise UserInputError(f"{name} must be in 0..{MAX_TOPK_LOGPROBS}, got {k}")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise UserInputError(f"sampling_params.max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise UserInputError(f"sampling_params.temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise UserInputError(f"sampling_params.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k == 0 or params.top_k < -1:
        raise UserInputError(f"sampling_params.top_k must be -1 (off) or >= 1, got {params.top_k}")
    if (
        body.prompt_alt_tokens_k
        or body.prompt_logprobs_last_n is not None
        or body.target_prompt_logprobs
    ):
        raise UserInputError(
            "prompt_alt_tokens_k, prompt_logprobs_last_n and target_prompt_logprobs are not supported"
        )
    room = max_context - len(tokens)
    max_tokens = min(params.max_tokens or room, room)
    stop = params.stop
    stop_strings: list[str] = []
    stop_ids: list[int] = []
    if isinstance(stop, str):
        stop_strings = [stop]
    elif stop:
        if all(isinstance(s, str) for s in stop):
            stop_strings = [str(s) for s in stop]
        else:
            stop_ids = [int(s) for s in stop]
    return SampleWork(
        prompt_tokens=tokens,
        num_samples=body.num_samples,
        max_tokens=max_tokens,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        stop_strings=stop_strings,
        stop_token_ids=stop_ids,
        prompt_logprobs=bool(body.prompt_logprobs),
        topk_prompt_logprobs=body.topk_prompt_logprobs,
        topk_sample_logprobs=body.topk_sample_logprobs,
        adapter_key=session.adapter_key,
    )
