"""Short-lived JWTs the SDK exchanges its API key for (``pjwt_auth_enabled``).

Tinker's SDK, told so by ``/client/config``, trades its key at ``POST /api/v1/auth/token`` for a
JWT, sends the JWT instead of the key, refreshes it before ``exp``, and reads the caller's
identity from its claims (``RestClient.whoami``, ``tinker auth whoami``). Tokens here are HS256,
signed with a key derived from the server's secret in the data directory (so they survive a
restart of the API server), and carry the tenant: ``sub`` ``tml:user:<tenant>`` and ``org_id``
``<tenant>``, which the SDK shows as ``tml:organization:<tenant>``. A token is refused once
expired, with ``WWW-Authenticate: Bearer error="invalid_token"``, which makes the SDK fetch a
new one and replay the request. Revoking a key does not revoke the tokens already made from it;
they end within ``auth.jwt_ttl_seconds``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

ISSUER = "tinsmith"
_HEADER = {"alg": "HS256", "typ": "JWT"}


class InvalidToken(Exception):
    """A token that is malformed, forged or expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def looks_like_jwt(credential: str) -> bool:
    """Three dot-separated parts: a JWT rather than an API key."""
    return credential.count(".") == 2


class JwtIssuer:
    """Makes and checks the server's JWTs."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._key = hmac.new(secret, b"tinsmith jwt", hashlib.sha256).digest()
        self.ttl_seconds = ttl_seconds

    def _sign(self, signing_input: bytes) -> bytes:
        return hmac.new(self._key, signing_input, hashlib.sha256).digest()

    def issue(self, tenant: str, now: float | None = None, **extra: str) -> str:
        """A token for ``tenant`` (with ``extra`` claims), valid for ``ttl_seconds``."""
        issued = int(now if now is not None else time.time())
        claims: dict[str, str | int] = {
            **extra,
            "iss": ISSUER,
            "sub": f"tml:user:{tenant}",
            "org_id": tenant,
            "tenant": tenant,
            "iat": issued,
            "exp": issued + self.ttl_seconds,
        }
        head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{head}.{body}".encode()
        return f"{head}.{body}.{_b64(self._sign(signing_input))}"

    def tenant(self, token: str, now: float | None = None) -> str:
        """The tenant of a valid token; ``InvalidToken`` otherwise."""
        return str(self.claims(token, now)["tenant"])

    def claims(self, token: str, now: float | None = None) -> dict[str, object]:
        """The claims of a valid token (one with a tenant); ``InvalidToken`` otherwise."""
        try:
            head, body, signature = token.split(".")
            expected = self._sign(f"{head}.{body}".encode())
            if not hmac.compare_digest(_unb64(signature), expected):
                raise InvalidToken("token signature is invalid")
            header = json.loads(_unb64(head))
            claims = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidToken("token is malformed") from exc
        if header != _HEADER or claims.get("iss") != ISSUER:
            raise InvalidToken("token was not issued by this server")
        if float(claims.get("exp", 0)) <= (now if now is not None else time.time()):
            raise InvalidToken("token has expired")
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise InvalidToken("token names no tenant")
        return dict(claims)
