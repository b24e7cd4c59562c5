"""The tests' one stand-in for a base model's coordinator actor (``CoordinatorAPI``).

It runs the real coordinator's input checks (``to_token_datums``, ``validate_loss_config``) and
asserts the invariants the server promises its workers, so a bad value that slips through the
server's parsing fails as a ``server``-category future instead of becoming a fake success; then it
returns canned results. mypy checks it against ``CoordinatorAPI`` (see ``_conforms``), so the fake
cannot drift from the interface the server calls.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tinsmith.actors.batching import to_token_datums
from tinsmith.actors.loss_specs import validate_loss_config
from tinsmith.errors import NotFoundError, UserInputError
from tinsmith.storage.transfer import StorageSite, upload_dir
from tinsmith.types.archives import ArchiveRef
from tinsmith.types.coordinator import CoordinatorAPI
from tinsmith.types.data import TensorData
from tinsmith.types.internal import (
    AdapterSource,
    CheckpointMeta,
    ModelStatus,
    SampleWork,
    SavedCheckpoint,
)
from tinsmith.types.sampling import SampledSequence, SampleResponse
from tinsmith.types.training import (
    AdamParams,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    LoraConfig,
)

if TYPE_CHECKING:
    from tinsmith.cluster.server import ServerState

MODEL = "test/model"
VOCAB = 100
MAX_CONTEXT = 64


def _expect(condition: bool, what: str) -> None:
    """An invariant the server promises its workers (an AssertionError is a server failure)."""
    if not condition:
        raise AssertionError(f"the server passed on {what}")


class FakeCoordinator:
    """A coordinator without actors: input checks, then canned results.

    ``data_dir`` is the server's data directory: saved checkpoints are uploaded to its local
    storage, so the server can list, load and download them. ``calls`` names every method
    called, in order.
    """

    def __init__(
        self,
        data_dir: Path,
        base_model: str = MODEL,
        vocab_size: int = VOCAB,
        max_context: int = MAX_CONTEXT,
    ) -> None:
        self.data_dir = data_dir
        self.base_model = base_model
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.models: set[str] = set()
        self.calls: list[str] = []

    def _enter(self, method: str, model_id: object = None, seq_id: object = None) -> None:
        """Record the call; with a ``model_id``, check the ids' types and that the model exists."""
        self.calls.append(method)
        if model_id is None:
            return
        _expect(
            isinstance(model_id, str) and (seq_id is None or isinstance(seq_id, int)),
            "mistyped ids",
        )
        if model_id not in self.models:
            raise NotFoundError(f"model_id {model_id!r} is not a training model")

    def _add(self, model_id: str, lora: LoraConfig) -> None:
        _expect(isinstance(model_id, str) and isinstance(lora, LoraConfig), "mistyped create_model")
        if model_id in self.models:
            raise UserInputError(f"model_id {model_id!r} already exists")
        self.models.add(model_id)

    async def create_model(self, model_id: str, lora: LoraConfig) -> None:
        self._enter("create_model")
        await asyncio.sleep(0)
        self._add(model_id, lora)

    async def unload_model(self, model_id: str) -> None:
        self._enter("unload_model", model_id)
        self.models.discard(model_id)

    async def create_from_checkpoint(
        self, model_id: str, lora: LoraConfig, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        self._enter("create_from_checkpoint")
        _expect(
            isinstance(archive, ArchiveRef) and isinstance(with_optimizer, bool), "mistyped load"
        )
        self._add(model_id, lora)
        return 0

    async def load_checkpoint(
        self, model_id: str, seq_id: int | None, archive: ArchiveRef, with_optimizer: bool
    ) -> int:
        self._enter("load_checkpoint", model_id, seq_id)
        _expect(
            isinstance(archive, ArchiveRef) and isinstance(with_optimizer, bool), "mistyped load"
        )
        return 0

    async def save_checkpoint(
        self,
        model_id: str,
        seq_id: int | None,
        archive: ArchiveRef,
        meta: CheckpointMeta,
        with_optimizer: bool,
    ) -> SavedCheckpoint:
        self._enter("save_checkpoint", model_id, seq_id)
        _expect(
            isinstance(meta, CheckpointMeta) and isinstance(with_optimizer, bool), "mistyped save"
        )
        directory = self.data_dir / "fake-adapter"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "adapter_config.json").write_text(meta.model_dump_json())
        site = StorageSite(data_dir=str(self.data_dir))
        return SavedCheckpoint(stored=upload_dir(site, archive, directory), meta=meta)

    async def forward_backward(
        self, model_id: str, seq_id: int | None, fb: ForwardBackwardInput, forward_only: bool
    ) -> ForwardBackwardOutput:
        self._enter("forward_backward", model_id, seq_id)
        _expect(
            isinstance(fb, ForwardBackwardInput) and isinstance(forward_only, bool),
            "mistyped forward_backward",
        )
        datums = to_token_datums(fb.data, fb.loss_fn, self.vocab_size, self.max_context)
        validate_loss_config(fb.loss_fn, fb.loss_fn_config)
        outputs = [
            {"logprobs": TensorData(data=[-1.0] * d.length, dtype="float32")} for d in datums
        ]
        return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics={"loss:sum": 1.0})

    async def optim_step(
        self, model_id: str, seq_id: int | None, adam: AdamParams
    ) -> dict[str, float]:
        self._enter("optim_step", model_id, seq_id)
        _expect(isinstance(adam, AdamParams), "mistyped optim_step")
        values = adam.model_dump().values()
        _expect(all(math.isfinite(v) and v >= 0 for v in values), f"Adam hyperparameters {adam}")
        return {"grad_norm:mean": 0.5}

    async def sync_to_samplers(self, model_id: str, seq_id: int | None, key: str) -> None:
        self._enter("sync_to_samplers", model_id, seq_id)
        _expect(isinstance(key, str), "a mistyped adapter key")

    async def refuse(self, model_id: str, seq_id: int | None, message: str) -> NoReturn:
        self._enter("refuse", model_id, seq_id)
        raise UserInputError(message)

    async def sample(self, work: SampleWork, source: AdapterSource | None) -> SampleResponse:
        self._enter("sample")
        _expect(isinstance(work, SampleWork), "mistyped sample")
        _expect(source is None or isinstance(source, AdapterSource), "a mistyped adapter source")
        _expect(
            bool(work.prompt_tokens) and len(work.prompt_tokens) < self.max_context,
            "a prompt of bad length",
        )
        _expect(
            all(0 <= t < self.vocab_size for t in work.prompt_tokens),
            "prompt tokens outside the vocabulary",
        )
        _expect(
            work.num_samples >= 1 and 1 <= work.max_tokens <= self.max_context, f"counts {work}"
        )
        _expect(
            math.isfinite(work.temperature) and work.temperature >= 0,
            f"temperature {work.temperature}",
        )
        _expect(
            0 < work.top_p <= 1 and (work.top_k == -1 or work.top_k >= 1), f"top_p/top_k {work}"
        )
        _expect(
            work.topk_prompt_logprobs >= 0 and work.topk_sample_logprobs >= 0,
            f"top-k logprobs {work}",
        )
        _expect(work.seed is None or -(2**63) <= work.seed < 2**64, f"seed {work.seed}")
        sequence = SampledSequence(stop_reason="length", tokens=[1] * work.max_tokens)
        return SampleResponse(sequences=[sequence] * work.num_samples)

    async def status(self) -> ModelStatus:
        self._enter("status")
        return ModelStatus(base_model=self.base_model, training_models=len(self.models), workers=[])


def _conforms(fake: FakeCoordinator) -> CoordinatorAPI:
    """Where mypy checks that the fake implements every ``CoordinatorAPI`` method, as typed."""
    return fake


def fake_state(tmp_path: Path, **settings: object) -> ServerState:
    """A ``ServerState`` serving MODEL (64-token context, 100-token vocabulary) through a
    FakeCoordinator, with local checkpoint storage under ``tmp_path``; ``settings``: the state's
    other fields (auth, limits, reaper_seconds...)."""
    from tinsmith.cluster.checkpoints import open_checkpoint_service
    from tinsmith.cluster.server import ServedModel, ServerState
    from tinsmith.storage.config import StorageConfig

    served = ServedModel(
        name=MODEL,
        model_dir=tmp_path,
        max_context_length=64,
        coordinator=FakeCoordinator(tmp_path / "data"),
        vocab_size=100,
    )
    checkpoints = open_checkpoint_service(StorageConfig(), tmp_path / "data")
    return ServerState(models={MODEL: served}, checkpoints=checkpoints, **settings)  # type: ignore[arg-type]
