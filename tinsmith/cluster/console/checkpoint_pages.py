"""Console pages of checkpoints: the tenant's list, one checkpoint (size, type, visibility,
TTL and expiry, a download link), and publishing, unpublishing and deleting one (deleting asks
first). A published checkpoint of another tenant can be viewed and tried, never changed."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.console.html import PREFIX, esc, href, link, pager, size, table, when
from tinsmith.cluster.console.pages import MAX_OFFSET, PAGE, checkpoints_table
from tinsmith.cluster.console.routing import console_router, form_fields, html
from tinsmith.cluster.state import State
from tinsmith.errors import UserInputError
from tinsmith.store.records import CheckpointRecord

router = console_router()


@router.get("/checkpoints")
async def checkpoints(state: State, offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> HTMLResponse:
    """The tenant's checkpoints, newest first, a page at a time."""
    records, total = state.checkpoints.list(None, current_tenant(), PAGE, offset)
    body = checkpoints_table(records, "no checkpoints yet")
    return html("Checkpoints", body + pager(f"{PREFIX}/checkpoints", offset, PAGE, total))


@router.get("/checkpoints/{run_id}/{checkpoint_id:path}")
async def checkpoint(
    run_id: str, checkpoint_id: str, request: Request, state: State, confirm: str = ""
) -> HTMLResponse:
    """One checkpoint: what it is, a download link, and (the owner's) actions."""
    record = state.readable_checkpoint(f"tinker://{run_id}/{checkpoint_id}", "checkpoint")
    mine = record.owner == current_tenant()
    url, expires = state.checkpoints.download_link(record, current_tenant(), str(request.base_url))
    ttl = "none" if record.expires_at is None else str(record.expires_at - record.created_at)
    run_cell = (
        link(run_id, href("training_runs", run_id)) if mine else f"<code>{esc(run_id)}</code>"
    )
    facts = [
        ("path", f"<code>{esc(record.tinker_path)}</code>"),
        ("training run", run_cell),
        ("type", esc(record.checkpoint_type)),
        ("base model", esc(record.base_model)),
        ("LoRA rank", str(record.lora.rank)),
        ("step", str(record.step)),
        ("size", esc(size(record.size_bytes))),
        ("optimizer state", "yes" if record.has_optimizer else "no"),
        ("visibility", "public" if record.public else "private"),
        ("TTL", esc(ttl)),
        ("expires", esc(when(record.expires_at) if record.expires_at else "never")),
        ("saved", esc(when(record.created_at))),
        ("sha256", f"<code>{esc(record.sha256)}</code>"),
        (
            "download",
            f'{link("archive (.tar)", url)} <span class="muted">link valid until '
            f"{esc(when(expires))}</span>",
        ),
    ]
    if not mine:
        facts.append(("owner", esc(record.owner)))
    play = href("playground", query="mode=checkpoint&checkpoint=" + quote(record.tinker_path))
    actions = [link("Try it in the playground", play)]
    if mine:
        actions.append(_actions(record, confirm == "delete"))
    body = table(("", ""), facts) + "<p>" + " ".join(actions) + "</p>"
    return html(f"Checkpoint {checkpoint_id}", body)


def _actions(record: CheckpointRecord, confirming: bool) -> str:
    """Publish or unpublish, and delete: a second page asks before deleting."""
    url = href("checkpoints", record.training_run_id, record.checkpoint_id)
    visibility = "unpublish" if record.public else "publish"
    buttons = (
        f'<form class="inline" method="post" action="{esc(url)}">'
        f'<button name="action" value="{visibility}">{visibility.capitalize()}</button></form>'
    )
    if not confirming:
        return buttons + link("Delete…", f"{url}?confirm=delete")
    return buttons + (
        f'<form class="inline" method="post" action="{esc(url)}">'
        f"<strong>Delete {esc(record.tinker_path)}? Its archive is removed for good.</strong> "
        '<button name="action" value="delete">Yes, delete</button></form>' + link("Cancel", url)
    )


@router.post("/checkpoints/{run_id}/{checkpoint_id:path}")
async def change_checkpoint(
    run_id: str, checkpoint_id: str, request: Request, state: State
) -> RedirectResponse:
    """Publish, unpublish or delete (the owner only), then back to a page."""
    action = (await form_fields(request)).get("action", "")
    record = state.owned_checkpoint(run_id, checkpoint_id)
    if action in ("publish", "unpublish"):
        state.checkpoints.set_public(record, action == "publish")
        back = href("checkpoints", run_id, checkpoint_id)
    elif action == "delete":
        await asyncio.to_thread(state.checkpoints.delete, record)
        back = href("training_runs", run_id)
    else:
        raise UserInputError(f"action must be publish, unpublish or delete, got {action!r}")
    return RedirectResponse(back, status_code=303)
