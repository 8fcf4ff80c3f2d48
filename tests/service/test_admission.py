"""Backpressure (issue 15, item 5): bounded requests and progress streams per replica (429 beyond,
/health always answered), request timeouts, and GET /jobs in pages.

The middleware is plain ASGI: it is exercised here on a small Starlette app whose routes hold
their request open until the test lets them go (so the counts are exact), and the paging on the
session's running service."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers.http import http
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from rayrt.service.admission import AdmissionMiddleware, AdmissionPolicy, set_policy


def _app(release: asyncio.Event) -> Starlette:
    async def slow(request):
        await release.wait()
        return JSONResponse({"ok": True})

    async def events(request):
        async def stream():
            yield "event: job\ndata: {}\n\n"
            await release.wait()
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def health(request):
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/slow", slow), Route("/jobs/j1/events", events), Route("/health", health)],
    )
    app.add_middleware(AdmissionMiddleware)
    return app


@pytest.fixture
def policy():
    yield
    set_policy(AdmissionPolicy())


def _client(release: asyncio.Event, **limits) -> httpx.AsyncClient:
    """A client of the small app under the admission policy ``limits``."""
    set_policy(AdmissionPolicy(**limits))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(release)), base_url="http://t")


def test_requests_beyond_the_bound_get_429_and_health_still_answers(policy):
    async def run():
        release = asyncio.Event()
        async with _client(release, max_requests=2, max_streams=1, request_timeout_s=30) as c:
            held = [asyncio.create_task(c.get("/slow")) for _ in range(2)]
            await asyncio.sleep(0.05)
            busy = await c.get("/slow")
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"] == "busy"
            assert (await c.get("/health")).status_code == 200, "monitoring always sees the service"
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await c.get("/slow")).status_code == 200, "the places are given back"

    asyncio.run(run())


def test_progress_streams_are_counted_apart(policy):
    async def run():
        release = asyncio.Event()
        async with _client(release, max_requests=1, max_streams=1, request_timeout_s=30) as c:
            stream = asyncio.create_task(c.get("/jobs/j1/events"))
            await asyncio.sleep(0.05)
            second = await c.get("/jobs/j1/events")
            assert second.status_code == 429 and "progress streams" in second.json()["message"]
            short = asyncio.create_task(c.get("/slow"))  # an open stream does not take a request's place
            await asyncio.sleep(0.05)
            release.set()
            assert (await short).status_code == 200 and (await stream).status_code == 200

    asyncio.run(run())


def test_a_request_past_its_timeout_is_stopped_with_503(policy):
    async def run():
        never = asyncio.Event()  # the slow route is never released
        async with _client(never, max_requests=4, max_streams=1, request_timeout_s=0.2) as c:
            r = await c.get("/slow")
            assert r.status_code == 503 and r.json()["error"] == "timeout"
            assert (await c.get("/health")).status_code == 200

    asyncio.run(run())


@pytest.mark.ray
def test_get_jobs_pages(serve_app, small_study_zip):
    with open(small_study_zip, "rb") as fh:
        pid = http.post(f"{serve_app}/patients", files=[("files", ("s.zip", fh, "application/zip"))], timeout=120)
    pid = pid.json()["id"]
    for _ in range(3):
        assert http.post(f"{serve_app}/jobs", json={"patient_id": pid}).status_code == 201
    every = [j["id"] for j in http.get(f"{serve_app}/jobs").json()["jobs"]]
    seen, after = [], None
    while True:
        page = http.get(f"{serve_app}/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == every and len(every) >= 3
    r = http.get(f"{serve_app}/jobs", params={"after": "nosuchjob0000"})
    assert r.status_code == 422 and r.json()["field"] == "after"
    assert http.get(f"{serve_app}/jobs", params={"limit": 0}).status_code == 422
