"""The web view: a single-page review UI served by the ingress at ``/ui``.

Plain HTML + vanilla JavaScript + CSS from ``rayrt/web/static/`` (package data), no template
engine, no CDN, nothing fetched from outside the service (hospital networks are often offline).
The page talks to the service only through its public HTTP API (``rayrt.service.app``).

Routes (``router``, an :class:`fastapi.APIRouter`, included by ``rayrt.service.app``)::

    GET /                  307 -> /ui
    GET /ui, /ui/          the page (index.html; the mount point is passed to the script)
    GET /ui/static/{name}  one static file, by exact name only (no path traversal)

Every answer carries a restrictive Content-Security-Policy (scripts, styles, images and requests
only from this origin; no inline script) and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
INDEX = "index.html"
ROOT_PLACEHOLDER = "__RAYRT_ROOT__"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def static_files() -> dict[str, Path]:
    """The servable files: name relative to STATIC_DIR (``/`` separated) -> path.

    Only regular files with a known content type whose real path lies inside STATIC_DIR are
    listed (a symlink pointing outside is left out); requests are matched against this table
    by exact name, so ``..``, absolute paths and encoded separators can never reach other files.
    """
    root = STATIC_DIR.resolve()
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in CONTENT_TYPES:
            continue
        real = p.resolve()
        if not real.is_relative_to(root):
            continue
        out[p.relative_to(root).as_posix()] = real
    return out


def _root(request: Request) -> str:
    """Where the application is mounted (Serve route prefix / ASGI root_path), without a trailing slash."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def _not_found(message: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": "not_found", "message": message}, headers=SECURITY_HEADERS)


@router.get("/")
def web_root(request: Request) -> RedirectResponse:
    """The service root opens the web view."""
    return RedirectResponse(url=f"{_root(request)}/ui", status_code=307)


@router.get("/ui")
@router.get("/ui/")
def web_index(request: Request) -> Response:
    """The single page; its ``data-root`` tells the script where the API is mounted."""
    path = static_files().get(INDEX)
    if path is None:
        return _not_found(f"the web view is not installed ({STATIC_DIR / INDEX} is missing)")
    text = path.read_text(encoding="utf-8").replace(ROOT_PLACEHOLDER, html.escape(_root(request), quote=True))
    return Response(content=text, media_type=CONTENT_TYPES[".html"], headers=SECURITY_HEADERS)


@router.get("/ui/static/{name:path}")
def web_static(name: str) -> Response:
    """One static file of the page, by its exact name (anything else is 404)."""
    path = static_files().get(name)
    if path is None:
        return _not_found(f"no web file {name!r}")
    return Response(content=path.read_bytes(), media_type=CONTENT_TYPES[path.suffix.lower()], headers=SECURITY_HEADERS)
