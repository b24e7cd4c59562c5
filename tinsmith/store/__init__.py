"""The durable metadata store: training runs and checkpoints (SQLite by default)."""

from tinsmith.store.base import MetadataStore
from tinsmith.store.records import CheckpointRecord, RunRecord

__all__ = ["CheckpointRecord", "MetadataStore", "RunRecord"]
