"""The routes of a FastAPI app, flattened: included routers are walked into (their layout differs
between FastAPI versions), for tests that check every route (test_web, test_auth)."""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["walk_routes"]


def walk_routes(routes: Any) -> Iterator[Any]:
    for r in routes:
        if hasattr(r, "effective_candidates"):  # FastAPI >= 0.137 keeps included routers as nodes
            yield from walk_routes(r.effective_candidates())
        elif hasattr(r, "original_router"):
            yield from walk_routes(r.original_router.routes)
        else:
            yield r
