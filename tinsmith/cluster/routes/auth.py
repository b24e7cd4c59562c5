"""Auth routes the SDK and the ``tinker auth`` commands call: ``POST /auth/token`` (an API key
for a JWT, when ``auth.issue_jwts``), and ``GET`` / ``DELETE /auth/apikey/me`` (what a key is,
and revoking the key itself: ``tinker auth login`` / ``logout``)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from tinsmith.cluster.auth import KeyRing, current_tenant, hash_key
from tinsmith.cluster.state import State, app_part
from tinsmith.errors import ConflictError
from tinsmith.types.auth import (
    ApiKeyDetails,
    ApiKeyOrgDetails,
    ApiKeyUserDetails,
    AuthTokenResponse,
    SelfApiKeyResponse,
)

router = APIRouter(prefix="/api/v1")


def get_keys(request: Request) -> KeyRing:
    """The app's ``KeyRing`` (set by ``build_app``)."""
    return app_part(request, KeyRing)


Keys = Annotated[KeyRing, Depends(get_keys)]


def _presented_key(request: Request) -> str:
    """The API key itself (not a JWT made from one): these routes act on the key."""
    credential = request.headers.get("x-api-key", "")
    if not credential.startswith("tml-"):
        raise HTTPException(status_code=401, detail="send the API key itself (X-API-Key: tml-...)")
    return credential


@router.post("/auth/token")
async def auth_token(request: Request, keys: Keys) -> AuthTokenResponse:
    """A JWT for the caller's tenant, valid for ``auth.jwt_ttl_seconds``."""
    _presented_key(request)
    if keys.jwts is None:
        raise HTTPException(status_code=404, detail="this server does not issue JWTs")
    return AuthTokenResponse(jwt=keys.jwts.issue(current_tenant()))


@router.get("/auth/apikey/me")
async def api_key_me(request: Request) -> SelfApiKeyResponse:
    """What the presented key is: its tenant (as the organization) and an id derived from its
    hash (the key itself is never stored)."""
    key = _presented_key(request)
    tenant = current_tenant()
    return SelfApiKeyResponse(
        key_id=int(hash_key(key)[:12], 16),
        name=f"{tenant} key",
        note="",
        details=ApiKeyDetails(
            org_details=ApiKeyOrgDetails(name=tenant), user_details=ApiKeyUserDetails(email="")
        ),
    )


@router.delete("/auth/apikey/me")
async def revoke_api_key_me(request: Request, state: State, keys: Keys) -> dict[str, str]:
    """Revoke the presented key (``tinker auth logout``): only a key made by ``tinsmith keys
    create``; keys from the server's configuration are the operator's to remove."""
    key = _presented_key(request)
    if keys.mode == "open":
        raise ConflictError("open mode accepts any tml- key: there is no key to revoke")
    if keys.is_static(key):
        raise ConflictError("this key comes from the server's configuration; ask its operator")
    await asyncio.to_thread(state.store.revoke_api_keys, hash_key(key), None)
    return {}
