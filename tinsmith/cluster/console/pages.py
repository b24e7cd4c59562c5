"""Console pages of sessions and training runs: what each tenant has, live and ended, with a
run's metrics plotted per step. Every lookup is the signed-in tenant's own: another tenant's
object answers "not found", as the API does."""

from __future__ import annotations

from collections import defaultdict

from fastapi import Query
from fastapi.responses import HTMLResponse, RedirectResponse

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.console.html import PREFIX, esc, href, link, pager, size, table, when
from tinsmith.cluster.console.plots import line_plot
from tinsmith.cluster.console.routing import console_router, html
from tinsmith.cluster.state import ServerState, State
from tinsmith.store.records import CheckpointRecord, MetricPoint, RunRecord, SessionRecord

PAGE = 50
MAX_OFFSET = 10_000_000

router = console_router()


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    """The console starts at the sessions."""
    return RedirectResponse(f"{PREFIX}/sessions", status_code=303)


@router.get("/sessions")
async def sessions(state: State, offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> HTMLResponse:
    """The tenant's sessions, newest first, a page at a time."""
    records = state.store.list_sessions(current_tenant(), PAGE + 1, offset)
    more, records = len(records) > PAGE, records[:PAGE]
    rows = [
        (
            link(r.session_id, href("sessions", r.session_id)),
            esc(r.display_name or ""),
            esc(r.project_id or ""),
            esc(_session_state(state, r)),
            "num:" + str(len(state.store.session_runs(r.session_id))),
            esc(when(r.created_at)),
        )
        for r in records
    ]
    headers = ("session", "name", "project", "status", "runs", "created")
    total = offset + len(records) + (1 if more else 0)
    body = table(headers, rows, "no sessions yet") + pager(
        f"{PREFIX}/sessions", offset, PAGE, total
    )
    return html("Sessions", body)


def _session_state(state: ServerState, record: SessionRecord) -> str:
    live = any(m.session_id == record.session_id for m in state.clients.training.values())
    if record.state != "active":
        return record.state.replace("_", " ")
    return "active, training clients loaded" if live else "active"


@router.get("/sessions/{session_id}")
async def session_page(session_id: str, state: State) -> HTMLResponse:
    """One session: what its client said of it, its training and sampling clients."""
    record = state.owned_session(session_id)
    count, stored = state.store.session_checkpoints(session_id)
    facts = [
        ("status", esc(_session_state(state, record))),
        ("name", esc(record.display_name or "")),
        ("project", esc(record.project_id or "")),
        ("tags", esc(", ".join(record.tags))),
        ("metadata", esc(record.user_metadata or {})),
        ("created", esc(when(record.created_at))),
        ("checkpoints", f"{count} ({esc(size(stored))})"),
    ]
    runs = [r for rid in state.store.session_runs(session_id) if (r := state.store.get_run(rid))]
    samplers = state.store.session_samplers(session_id)
    body = (
        table(("", ""), facts)
        + "<h2>Training clients</h2>"
        + _runs_table(state, runs, "no training clients")
        + "<h2>Sampling clients</h2>"
        + table(
            ("sampling session", "status"),
            [
                (f"<code>{esc(s)}</code>", "live" if s in state.clients.samplers else "gone")
                for s in samplers
            ],
            "no sampling clients",
        )
    )
    return html(f"Session {session_id}", body)


def _runs_table(state: ServerState, runs: list[RunRecord], empty: str) -> str:
    rows = [
        (
            link(r.training_run_id, href("training_runs", r.training_run_id)),
            esc(r.base_model),
            "num:" + str(r.lora.rank),
            "live" if r.training_run_id in state.clients.training else "unloaded",
            esc(when(r.last_request_time)),
        )
        for r in runs
    ]
    return table(("training run", "base model", "rank", "status", "last request"), rows, empty)


@router.get("/training_runs")
async def training_runs(state: State, offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> HTMLResponse:
    """The tenant's training runs, newest first, a page at a time."""
    runs, total = state.store.list_runs(current_tenant(), PAGE, offset)
    body = _runs_table(state, runs, "no training runs yet")
    return html("Training runs", body + pager(f"{PREFIX}/training_runs", offset, PAGE, total))


@router.get("/training_runs/{run_id}")
async def training_run(run_id: str, state: State) -> HTMLResponse:
    """One run: its status, metrics per step as plots, and checkpoints."""
    run = state.owned_run(run_id)
    points = state.store.run_metrics(run_id, state.limits.max_metric_points_per_run)
    steps = max((p.step for p in points if p.kind == "optim_step"), default=0)
    facts = [
        ("status", "live" if run_id in state.clients.training else "unloaded"),
        ("session", link(run.session_id, href("sessions", run.session_id))),
        ("base model", esc(run.base_model)),
        ("LoRA", esc(run.lora.model_dump())),
        ("optimizer steps", str(steps)),
        ("created", esc(when(run.created_at))),
        ("last request", esc(when(run.last_request_time))),
        ("metadata", esc(run.user_metadata or {})),
    ]
    records, total = state.checkpoints.list(run_id, current_tenant(), PAGE, 0)
    body = (
        table(("", ""), facts)
        + "<h2>Metrics per step</h2>"
        + _plots(points)
        + f"<h2>Checkpoints ({total})</h2>"
        + checkpoints_table(records, "no checkpoints")
    )
    return html(f"Training run {run_id}", body)


def _plots(points: list[MetricPoint]) -> str:
    """One plot per (call kind, metric): per step, ``:sum`` metrics summed over the step's calls
    (a step may take several forward_backwards), others averaged."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        prefix = "" if point.kind == "forward_backward" else f"{point.kind}/"
        for key, value in point.metrics.items():
            series[prefix + key][point.step].append(value)
    if not series:
        return '<p class="muted">no training calls yet</p>'
    order = sorted(series, key=lambda k: (not k.startswith("loss"), "/" in k, k))
    plots = []
    for name in order:
        per_step = series[name]
        reduce = sum if name.endswith(":sum") else (lambda v: sum(v) / len(v))
        pts = [(float(step), float(reduce(values))) for step, values in sorted(per_step.items())]
        plots.append(line_plot(name, pts))
    return f'<div class="plots">{"".join(plots)}</div>'


def checkpoints_table(records: list[CheckpointRecord], empty: str) -> str:
    """Checkpoints as a table, each linked to its page."""
    rows = [
        (
            link(r.checkpoint_id, href("checkpoints", r.training_run_id, r.checkpoint_id)),
            esc(r.checkpoint_type),
            "num:" + str(r.step),
            "num:" + esc(size(r.size_bytes)),
            "public" if r.public else "private",
            esc(when(r.expires_at) if r.expires_at else "never"),
            esc(when(r.created_at)),
        )
        for r in records
    ]
    headers = ("checkpoint", "type", "step", "size", "visibility", "expires", "saved")
    return table(headers, rows, empty)
