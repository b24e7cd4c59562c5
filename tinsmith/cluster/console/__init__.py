"""The console: web pages at Tinker's console paths under ``/console`` (sessions, training
runs with their metrics plotted, checkpoints, a playground, the cluster), behind the API keys.

A link the SDK hands out (``get_console_url()``, a checkpoint's playground link) works here
once ``https://tinker.thinkingmachines.ai`` is replaced by ``http://<server>/console``.
"""

from __future__ import annotations

from fastapi import FastAPI

from tinsmith.cluster.auth import KeyRing
from tinsmith.cluster.console import (
    checkpoint_pages,
    cluster_page,
    login_pages,
    pages,
    playground,
)
from tinsmith.cluster.console.logins import ConsoleLogins
from tinsmith.cluster.state import attach


def install_console(app: FastAPI, keys: KeyRing) -> None:
    """Add the console's pages to ``app``, signing in with the keys ``keys`` accepts."""
    logins = ConsoleLogins(open_mode=keys.mode == "open", tenant_of_key=keys.tenant_of)
    attach(app, logins)
    logins.install(app)
    for module in (login_pages, pages, checkpoint_pages, playground, cluster_page):
        app.include_router(module.router)
