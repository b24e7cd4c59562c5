"""API keys and tenants.

Every request under ``/api/v1`` (except the health check and signed download links) carries the
SDK's ``X-API-Key``: an API key, or a JWT the SDK got for one (``tinsmith.cluster.jwt_tokens``). In
``keys`` mode the key must be one the server knows: keys are stored only as sha256 hashes (they are
256-bit random, so an unsalted hash is safe), each with its tenant, and come from ``tinsmith keys
create``, a keys file, or an environment variable (Kubernetes Secrets). In ``open`` mode (the local
preset's default) any ``tml-`` key is accepted and every request belongs to one tenant, ``local``.

The request's tenant lives in a context variable, set by the middleware; the server's lookups
(models, samplers, futures, runs, checkpoints) compare it with each object's owner, and answer
404 for anything another tenant owns, so a tenant cannot even learn what exists.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from tinsmith.cluster.config import AuthConfig
from tinsmith.cluster.jwt_tokens import InvalidToken, JwtIssuer, looks_like_jwt
from tinsmith.errors import ConfigurationError

OPEN_TENANT = "local"
KEY_PREFIX = "tml-"
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tinsmith_tenant", default=OPEN_TENANT)
_PUBLIC_PATHS = ("/api/v1/healthz", "/api/v1/tinsmith/files/", "/api/v1/tinsmith/traces/")
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_tenant(name: str, source: str) -> str:
    """A tenant name, refused unless 1-64 letters, digits, '.', '_' or '-': tenants scope
    idempotency keys and storage paths, where a '/' or ':' would let two tenants collide."""
    if not _TENANT_RE.match(name):
        raise ConfigurationError(
            f"{source}: tenant {name!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def current_tenant() -> str:
    """The tenant of the request being served (``local`` outside a request and in open mode)."""
    return TENANT.get()


def hash_key(api_key: str) -> str:
    """How a key is stored and looked up: its sha256, never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random ``tml-`` key, in the SDK's format."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str) -> dict[str, str]:
    """``tenant:key`` entries (commas or newlines; ``#`` comments) -> {hash: tenant}. A refused
    entry is named by its position, never echoed (it may hold a key)."""
    found: dict[str, str] = {}
    entries = [raw.split("#", 1)[0].strip() for raw in text.replace(",", "\n").splitlines()]
    for number, entry in enumerate(filter(None, entries), start=1):
        tenant, sep, key = entry.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or len(key) <= len(KEY_PREFIX) or not key.startswith(KEY_PREFIX):
            raise ConfigurationError(f"{source}: entry {number} is not 'tenant:tml-...'")
        found[hash_key(key)] = check_tenant(tenant, f"{source}: entry {number}")
    return found


class KeyRing:
    """Which tenant an API key belongs to."""

    def __init__(
        self,
        config: AuthConfig,
        stored: Callable[[str], str | None],
        jwts: JwtIssuer | None = None,
    ) -> None:
        self.mode = config.mode
        self._stored = stored
        self.jwts = jwts  # None: API keys only
        self._static: dict[str, str] = {}
        keys_file = config.keys_file or os.environ.get("TINSMITH_API_KEYS_FILE")
        if keys_file:
            path = Path(keys_file).expanduser()
            try:
                self._static |= parse_keys(path.read_text(), str(path))
            except OSError as exc:
                raise ConfigurationError(f"auth.keys_file {path}: {exc}") from exc
        if os.environ.get(config.keys_env):
            self._static |= parse_keys(os.environ[config.keys_env], f"${config.keys_env}")

    def is_static(self, api_key: str) -> bool:
        """Whether a key comes from the server's configuration (file or environment), which
        only the operator can revoke."""
        return hash_key(api_key) in self._static

    def tenant_of(self, api_key: str | None) -> str | None:
        """The tenant of an API key, or None for a key this server does not accept."""
        if not api_key or not api_key.startswith(KEY_PREFIX):
            return None
        if self.mode == "open":
            return OPEN_TENANT
        digest = hash_key(api_key)
        return self._static.get(digest) or self._stored(digest)

    def install(self, app: FastAPI) -> None:
        @app.middleware("http")
        async def authenticate(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            path = request.url.path
            if not path.startswith("/api/v1/") or path.startswith(_PUBLIC_PATHS):
                return await call_next(request)
            credential = request.headers.get("x-api-key") or ""
            # a key is a key even if it has dots; a JWT never starts with tml-
            is_jwt = not credential.startswith(KEY_PREFIX) and looks_like_jwt(credential)
            if self.jwts is not None and is_jwt:
                try:
                    tenant: str | None = self.jwts.tenant(credential)
                except InvalidToken as exc:  # the SDK fetches a new token and replays
                    return JSONResponse(
                        status_code=401,
                        content={"detail": str(exc)},
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                    )
            else:
                tenant = self.tenant_of(credential)
            if tenant is None:
                detail = (
                    "missing API key (X-API-Key)"
                    if not request.headers.get("x-api-key")
                    else "unknown API key"
                )
                return JSONResponse(status_code=401, content={"detail": detail})
            token = TENANT.set(tenant)
            try:
                return await call_next(request)
            finally:
                TENANT.reset(token)
