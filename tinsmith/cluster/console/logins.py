"""Who is looking at the console: an API key entered once becomes a browser-session cookie.

The cookie holds a random token, never the key; the server maps it to the key's tenant for
``TOKEN_HOURS`` (or until sign-out), in memory, so a restart asks for the key again. The cookie
is HttpOnly and SameSite=Strict (another site cannot send the console's forms) and has no
expiry of its own, so it ends with the browser session. In open mode there is one tenant and
no key to enter.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from tinsmith.cluster.auth import OPEN_TENANT, TENANT
from tinsmith.cluster.console.html import PREFIX

COOKIE = "tinsmith_console"
TOKEN_HOURS = 12.0
MAX_LOGINS = 10_000  # the oldest sign-in is forgotten beyond this


@dataclass
class ConsoleLogins:
    """Console sign-ins: token -> (tenant, expiry in monotonic seconds)."""

    open_mode: bool
    tenant_of_key: Callable[[str | None], str | None]
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def sign_in(self, api_key: str) -> str | None:
        """A new token for the key's tenant, or None for a key the server does not accept."""
        tenant = self.tenant_of_key(api_key.strip())
        if tenant is None:
            return None
        now = time.monotonic()
        self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
        while len(self._tokens) >= MAX_LOGINS:
            del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (tenant, now + TOKEN_HOURS * 3600)
        return token

    def sign_out(self, token: str | None) -> None:
        if token:
            self._tokens.pop(token, None)

    def tenant(self, token: str | None) -> str | None:
        """The signed-in tenant of a request's token (open mode: always the one tenant)."""
        if self.open_mode:
            return OPEN_TENANT
        found = self._tokens.get(token or "")
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def install(self, app: FastAPI) -> None:
        """Console pages run as their signed-in tenant; without one, they go to the sign-in
        page, which comes back to the page asked for."""

        @app.middleware("http")
        async def console_tenant(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            path = request.url.path
            if not (path == PREFIX or path.startswith(PREFIX + "/")):
                return await call_next(request)
            tenant = self.tenant(request.cookies.get(COOKIE))
            if tenant is None:
                if path in (f"{PREFIX}/login", f"{PREFIX}/logout"):
                    return await call_next(request)
                back = path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"{PREFIX}/login?next={quote(back, safe='')}", status_code=303
                )
            token = TENANT.set(tenant)
            try:
                return await call_next(request)
            finally:
                TENANT.reset(token)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/sessions"
