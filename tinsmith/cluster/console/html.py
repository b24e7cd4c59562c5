"""The console's HTML: one page layout, tables, links and formatting, all escaped here.

Pages are plain server-rendered HTML with an inline stylesheet: nothing is fetched from
anywhere but this server, so the console works inside an air-gapped cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import quote

PREFIX = "/console"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.4rem;
align-items:center}
header a{color:#d7e3f4;text-decoration:none}header b{color:#fff;margin-right:1rem}
header .who{margin-left:auto;color:#9aa7b5;font-size:.9rem}
main{padding:1rem 1.4rem;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1.2rem;font-size:.9rem}
th,td{border:1px solid #dde2e8;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85rem}.muted{color:#6b7684}.error{color:#a31515}
form.inline{display:inline}button{margin:.2rem .4rem .2rem 0}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plot{background:#fff;border:1px solid #dde2e8}
.plot text{font-size:11px;fill:#4a5561}.plot .line{fill:none;stroke:#2f6fb3;stroke-width:1.5}
.plot circle{fill:#2f6fb3}.tokens span{display:inline-block;padding:1px 2px;margin:1px;
border-radius:3px;white-space:pre;font-family:monospace}
textarea{width:100%;font-family:monospace}label{display:inline-block;margin:.3rem 1rem .3rem 0}
input[type=number]{width:6rem}
"""


def esc(value: object) -> str:
    """Text as HTML (quotes too, so it is safe inside attributes)."""
    return escape(str(value), quote=True)


def href(*parts: str, query: str = "") -> str:
    """A console URL: each part quoted whole (ids hold ':' and '/'), under the prefix."""
    path = PREFIX + "".join("/" + quote(part, safe="") for part in parts)
    return path + ("?" + query if query else "")


def link(text: object, url: str) -> str:
    """An anchor to ``url`` showing ``text``, both escaped."""
    return f'<a href="{esc(url)}">{esc(text)}</a>'


def when(moment: dt.datetime | None) -> str:
    """A timestamp as UTC, to the second ("—" for none)."""
    return "—" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str = "none") -> str:
    """Rows of already-escaped cells (numbers right-aligned by a ``num:`` prefix)."""
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if cell.startswith("num:"):
                cells.append(f'<td class="num">{cell[4:]}</td>')
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # none: key-value facts
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def pager(url: str, offset: int, limit: int, total: int) -> str:
    """Previous / next links of a listing with ``total`` rows."""
    links = []
    if offset > 0:
        links.append(link("← newer", f"{url}?offset={max(0, offset - limit)}"))
    if offset + limit < total:
        links.append(link("older →", f"{url}?offset={offset + limit}"))
    shown = f"{offset + 1}–{min(total, offset + limit)} of {total}" if total else "0"
    return f'<p class="muted">{shown} {" ".join(links)}</p>'


def page(title: str, body: str, tenant: str | None, status: int = 200) -> tuple[str, int]:
    """The whole page: header with the console's sections, then ``body`` (escaped by its
    maker)."""
    nav = " ".join(
        link(text, href(path))
        for text, path in (
            ("Sessions", "sessions"),
            ("Training runs", "training_runs"),
            ("Checkpoints", "checkpoints"),
            ("Playground", "playground"),
            ("Cluster", "cluster"),
        )
    )
    who = ""
    if tenant is not None:
        logout = (
            f'<form class="inline" method="post" action="{PREFIX}/logout">'
            '<button type="submit">sign out</button></form>'
        )
        who = f'<span class="who">tenant <b>{esc(tenant)}</b> {logout}</span>'
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · tinsmith</title><style>{_STYLE}</style></head><body>"
        f"<header><b>tinsmith</b>{nav}{who}</header><main><h1>{esc(title)}</h1>{body}</main>"
        "</body></html>"
    )
    return html, status
