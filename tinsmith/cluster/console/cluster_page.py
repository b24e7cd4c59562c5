"""The console's cluster page: models, trainer ranks, sampler replicas, restarts and queue
depth, as ``GET /api/v1/tinsmith/status`` and ``/metrics`` know them (the workers only for
admin tenants, as the status route shows them)."""

from __future__ import annotations

from fastapi.responses import HTMLResponse

from tinsmith.cluster.auth import current_tenant
from tinsmith.cluster.console.html import esc, size, table
from tinsmith.cluster.console.routing import console_router, html
from tinsmith.cluster.state import State
from tinsmith.types.coordinator import CoordinatorAPI

router = console_router()


@router.get("/cluster")
async def cluster(state: State) -> HTMLResponse:
    """Models, trainer ranks and sampler replicas, restarts and queue depth: what
    ``/api/v1/tinsmith/status`` reports (workers for admins only, as there)."""
    admin = state.auth.mode == "open" or current_tenant() in state.auth.admin_tenants
    parts = [f"<p>requests in flight (all tenants): {state.futures.pending()}</p>"] if admin else []
    for served in state.models.values():
        mine = sum(
            1
            for m in state.clients.training.values()
            if m.base_model == served.name and m.owner == current_tenant()
        )
        parts.append(
            f"<h2>{esc(served.name)}</h2><p>{esc(served.arch.model_type)}, context "
            f"{served.max_context_length} tokens; your live training clients: {mine}</p>"
        )
        if admin:
            parts.append(await _workers(served.coordinator))
    return html("Cluster", "".join(parts))


async def _workers(coordinator: CoordinatorAPI) -> str:
    status = await coordinator.status()
    rows = [
        (
            esc(w.kind),
            "num:" + str(w.index),
            "num:" + str(w.pid),
            "num:" + esc(size(w.rss_bytes)),
            "num:" + str(w.adapters),
        )
        for w in status.workers
    ]
    summary = (
        f"<p>training clients (all tenants): {status.training_models}; trainer restarts: "
        f"{status.trainer_restarts}; sampler replicas alive: {esc(status.sampler_alive)}, "
        f"requests served: {esc(status.sampler_requests)}, replaced: "
        f"{esc(status.sampler_restarts)}</p>"
    )
    return summary + table(("worker", "index", "pid", "memory", "adapters"), rows, "no workers")
