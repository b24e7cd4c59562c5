"""Wire types of the auth routes: the JWT exchange and the presented key's own details, as the
SDK (``AuthTokenResponse``) and the ``tinker auth`` commands (``SelfApiKeyResponse``) read
them."""

from __future__ import annotations

from tinsmith.types.base import WireModel


class AuthTokenResponse(WireModel):
    """``POST /auth/token``: a JWT for the caller."""

    jwt: str


class ApiKeyOrgDetails(WireModel):
    """The organization a key belongs to: here, its tenant."""

    name: str


class ApiKeyUserDetails(WireModel):
    """The user a key belongs to: tinsmith knows tenants, not people, so no email."""

    email: str


class ApiKeyDetails(WireModel):
    """Who a key belongs to."""

    org_details: ApiKeyOrgDetails
    user_details: ApiKeyUserDetails


class SelfApiKeyResponse(WireModel):
    """``GET /auth/apikey/me``: the presented key's public details."""

    key_id: int
    name: str
    note: str
    details: ApiKeyDetails
