"""Storage settings (part of the cluster config; pydantic only, so every actor can import it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StorageConfig(BaseModel):
    """Where checkpoint archives are written. Credentials left empty come from the standard AWS
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "s3"] = Field(
        default="local", description="'local' directory or 's3' (boto3)."
    )
    local_dir: str | None = Field(
        default=None,
        description="Directory of the local backend (default: <data_dir>/checkpoints).",
    )
    bucket: str | None = Field(default=None, description="S3 bucket (required for the s3 backend).")
    prefix: str = Field(
        default="tinsmith", description="Key prefix under which every archive is written."
    )
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint, for S3-compatible servers."
    )
    region: str | None = Field(default=None, description="S3 region.")
    access_key_id: str | None = Field(
        default=None, description="S3 access key (default: AWS environment)."
    )
    secret_access_key: str | None = Field(
        default=None, description="S3 secret key (default: AWS environment)."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="path",
        description="S3 addressing style; path works with most S3-compatible servers.",
    )
    multipart_threshold_mb: int = Field(
        default=64,
        ge=5,
        description="Archives larger than this are uploaded in parts of this size.",
    )
    url_expiry_seconds: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="Lifetime of presigned download URLs."
    )
