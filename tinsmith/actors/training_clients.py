"""What the coordinator keeps per training client: the order its requests run in, and the
gradients it has accumulated since its last optimizer step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tinsmith.errors import UserInputError, WorkerError
from tinsmith.types.training import LoraConfig


class Sequencer:
    """Releases a model's requests strictly in seq_id order (1, 2, 3, ...), waiting for gaps."""

    def __init__(self) -> None:
        self.next_seq = 1
        self.cond = asyncio.Condition()
        self.claimed: set[int] = set()

    async def wait_turn(self, seq_id: int | None) -> None:
        """Wait for ``seq_id``'s turn. Each seq_id is taken once: a second request with it (a replay
        under another idempotency key), even one arriving while the first still waits or runs, is
        refused, so nothing is applied twice."""
        if seq_id is None:
            return
        async with self.cond:
            if seq_id < self.next_seq or seq_id in self.claimed:
                raise UserInputError(
                    f"seq_id {seq_id} was already used (next expected {self.next_seq})"
                )
            self.claimed.add(seq_id)
            await self.cond.wait_for(lambda: self.next_seq == seq_id)

    async def done(self, seq_id: int | None) -> None:
        """Pass the turn on to ``seq_id + 1`` (whether the request succeeded or not)."""
        if seq_id is None:
            return
        async with self.cond:
            self.next_seq = seq_id + 1
            self.claimed.discard(seq_id)
            self.cond.notify_all()


class Gradients:
    """A client's gradients since its last optimizer step: optim_step needs some, and a trainer
    restart loses them (the client is told once: applying only later ones would be wrong)."""

    def __init__(self) -> None:
        self.pending = False  # a forward_backward ran since the last optim_step (or load)
        self.completed = 0  # forward_backward calls that finished since the last optim_step
        self.lost = False  # a trainer restart dropped some of them

    def stepped(self) -> None:
        """An optimizer step consumed them."""
        self.pending, self.completed = False, 0

    def restarted(self) -> None:
        """The trainer ranks are restarting: any completed ones are gone with the old ranks."""
        self.lost = self.lost or self.completed > 0
        self.stepped()

    def raise_if_lost(self) -> None:
        """Fail the client's next forward_backward or optim_step once if some were lost."""
        if self.lost:
            self.lost = False
            raise WorkerError(
                "the trainer ranks restarted after this client's last optimizer step and the "
                "gradients of its forward_backward calls since then were lost (the adapter is at "
                "that step): repeat those forward_backward calls, then optim_step"
            )


@dataclass
class TrainingClient:
    """One training client: its adapter, its requests' order and its gradients."""

    adapter_id: str
    lora: LoraConfig
    order: Sequencer = field(default_factory=Sequencer)
    gradients: Gradients = field(default_factory=Gradients)
