"""The console's sign-in and sign-out pages (``ConsoleLogins`` keeps who is signed in)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tinsmith.cluster.console.html import PREFIX, esc
from tinsmith.cluster.console.logins import COOKIE, ConsoleLogins, safe_next
from tinsmith.cluster.console.routing import console_router, form_fields, html
from tinsmith.cluster.state import app_part

router = console_router()


def _logins(request: Request) -> ConsoleLogins:
    return app_part(request, ConsoleLogins)


def _login_form(target: str, problem: str = "") -> str:
    error = f'<p class="error">{esc(problem)}</p>' if problem else ""
    return (
        f"{error}<p>Enter an API key of this server (the one your Tinker SDK uses). It is "
        "kept for this browser session only.</p>"
        f'<form method="post" action="{PREFIX}/login">'
        f'<input type="hidden" name="next" value="{esc(target)}">'
        '<label>API key <input type="password" name="api_key" size="60" '
        'autocomplete="off" autofocus></label> <button type="submit">Sign in</button></form>'
    )


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    """The key form (or on to ``next`` when already signed in)."""
    if _logins(request).tenant(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return html("Sign in", _login_form(safe_next(next)), signed_in=False)


@router.post("/login")
async def login(request: Request) -> Response:
    """A key the server accepts becomes the browser session's cookie."""
    fields = await form_fields(request)
    target = safe_next(fields.get("next"))
    token = _logins(request).sign_in(fields.get("api_key", ""))
    if token is None:
        body = _login_form(target, "That API key is not one this server accepts.")
        return html("Sign in", body, 401, signed_in=False)
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=PREFIX, secure=secure)
    return response


@router.post("/logout")
async def logout(request: Request) -> HTMLResponse:
    """Forget the browser's sign-in."""
    _logins(request).sign_out(request.cookies.get(COOKIE))
    response = html("Signed out", f'<p><a href="{PREFIX}/login">Sign in again</a></p>', 200, False)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response
