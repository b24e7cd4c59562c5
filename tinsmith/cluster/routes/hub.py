"""Each served model's tokenizer and processor files under ``/hf``, read-only, in the layout
``huggingface_hub`` downloads from.

The SDK's ``get_tokenizer()`` and the cookbook's renderers call
``AutoTokenizer.from_pretrained("<model name>")`` on the client's machine, which on a Kubernetes
client has neither the hub nor the server's disk: with ``HF_ENDPOINT=http://<server>/hf`` those
calls resolve here. Only the files a tokenizer or processor loads are served (never weights),
without an API key (base-model tokenizers are no tenant's data); the "commit" is a digest of
the files, so a changed model is downloaded afresh.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from tinsmith.cluster.state import ServedModel, State
from tinsmith.types.architectures import TOKENIZER_FILES

router = APIRouter(prefix="/hf")


@functools.cache
def _snapshot(model_dir: Path) -> tuple[dict[str, Path], str]:
    """The model's served files and their digest (read once: a served model does not change)."""
    files = {n: model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()}
    digest = hashlib.sha1()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return files, digest.hexdigest()


def _not_found(code: str, message: str) -> Response:
    """A 404 huggingface_hub maps to its own error (``EntryNotFound`` is an optional file that is
    absent, which transformers skips)."""
    return JSONResponse(
        status_code=404,
        content={"error": message},
        headers={"X-Error-Code": code, "X-Error-Message": message},
    )


def _split(rest: str, models: dict[str, ServedModel]) -> tuple[ServedModel, str] | None:
    """``<model name>/<what>`` with the longest served name that prefixes ``rest``."""
    for name in sorted(models, key=len, reverse=True):
        if rest == name or rest.startswith(name + "/"):
            return models[name], rest[len(name) + 1 :]
    return None


@router.api_route("/{rest:path}", methods=["GET", "HEAD"])
async def hub(rest: str, request: Request, state: State) -> Response:
    """``<name>/resolve/<revision>/<file>`` (a file) and ``api/models/<name>[/revision/<rev>]``,
    ``api/models/<name>/tree/<rev>[/<folder>]`` (its listing)."""
    api = rest.startswith("api/models/")
    found = _split(rest[len("api/models/") :] if api else rest, state.models)
    if found is None:
        return _not_found("RepoNotFound", "no such model on this server")
    model, what = found
    files, commit = _snapshot(model.model_dir)
    if api:
        return _listing(model, what, files, commit)
    parts = what.split("/", 2)
    if len(parts) != 3 or parts[0] != "resolve":
        return _not_found("EntryNotFound", "not a file path")
    path = files.get(parts[2])
    if path is None:
        return _not_found("EntryNotFound", f"{parts[2]} is not served")
    data = path.read_bytes()
    etag = f'"{hashlib.sha1(data).hexdigest()}"'
    headers = {"X-Repo-Commit": commit, "ETag": etag, "Content-Length": str(len(data))}
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = b"" if request.method == "HEAD" else data
    return Response(content=body, headers=headers, media_type=media)


def _listing(model: ServedModel, what: str, files: dict[str, Path], commit: str) -> Response:
    entries = [
        {"type": "file", "path": n, "size": p.stat().st_size, "oid": commit}
        for n, p in sorted(files.items())
    ]
    parts = what.split("/")
    if parts[0] == "tree":  # tree/<revision>[/<folder>]: the files are all at the top
        return JSONResponse(entries if len(parts) <= 2 or not parts[2] else [])
    if what and parts[0] != "revision":
        return _not_found("EntryNotFound", "not a listing")
    siblings = [{"rfilename": e["path"]} for e in entries]
    info = {"id": model.name, "modelId": model.name, "sha": commit, "siblings": siblings}
    return JSONResponse(info | {"tags": [], "private": False})
