"""Cross-site and host checks (rayrt.service.http_guard): the rules as functions, then through the
real service: a browser on another site cannot change anything, a foreign Host name is refused,
a parsed body must be JSON, and every answer carries the security headers."""

from __future__ import annotations

import pytest
from helpers.http import http
from helpers.service import stored_files

from rayrt.domain.errors import InputError
from rayrt.service.http_guard import GuardPolicy, check_request, host_name, require_json


def _check(policy, method, headers):
    return check_request(policy, method, {k.lower(): v for k, v in headers.items()})


def test_policy_for_the_bind_address():
    local = GuardPolicy.for_bind("127.0.0.1")
    assert set(local.trusted_hosts) == {"localhost", "127.0.0.1", "::1"}
    assert GuardPolicy.for_bind("0.0.0.0").trusted_hosts == ("*",)
    configured = GuardPolicy.for_bind("0.0.0.0", ["rayrt.example.org", ".hospital.org"], ["https://portal.org/"])
    assert configured.trusted_hosts == ("rayrt.example.org", ".hospital.org")
    assert configured.allowed_origins == ("https://portal.org",)
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost" and host_name("::1") == "::1"


def test_host_rules():
    local = GuardPolicy.for_bind("127.0.0.1")
    assert _check(local, "GET", {"Host": "127.0.0.1:8000"}) is None
    assert _check(local, "GET", {"Host": "localhost"}) is None
    assert _check(local, "GET", {"Host": "[::1]:8000"}) is None
    assert _check(local, "GET", {"Host": "rebind.attacker.example:8000"})[0] == 400  # DNS rebinding
    assert _check(local, "GET", {})[0] == 400
    dom = GuardPolicy.for_bind("0.0.0.0", [".hospital.org"])
    assert _check(dom, "GET", {"Host": "rt.hospital.org"}) is None
    assert _check(dom, "GET", {"Host": "hospital.org"}) is None
    assert _check(dom, "GET", {"Host": "evilhospital.org"})[0] == 400


def test_origin_rules():
    local = GuardPolicy.for_bind("127.0.0.1", allowed_origins=["https://portal.hospital.org"])
    host = {"Host": "127.0.0.1:8000"}
    assert _check(local, "POST", host) is None  # the CLI: no Origin, no Sec-Fetch-Site
    assert _check(local, "POST", {**host, "Origin": "http://127.0.0.1:8000"}) is None  # the web page itself
    assert _check(local, "POST", {**host, "Origin": "https://portal.hospital.org"}) is None
    for bad in ("https://evil.example", "null", "http://127.0.0.1:9999"):
        assert _check(local, "POST", {**host, "Origin": bad})[:2] == (403, "origin"), bad
    assert _check(local, "DELETE", {**host, "Sec-Fetch-Site": "cross-site"})[0] == 403
    assert _check(local, "POST", {**host, "Sec-Fetch-Site": "same-origin"}) is None
    assert _check(local, "GET", {**host, "Origin": "https://evil.example"}) is None  # reads are the auth's business


def test_json_bodies_only():
    require_json("application/json; charset=utf-8")
    require_json("application/merge-patch+json")
    for bad in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        with pytest.raises(InputError) as e:
            require_json(bad)
        assert e.value.status == 415


@pytest.mark.ray
def test_the_service_refuses_cross_site_writes_and_foreign_hosts(serve_app, serve_settings, small_study_zip):
    before = stored_files(serve_settings.data_dir)
    # a page on another site posting a patient (a simple multipart form needs no pre-flight)
    with open(small_study_zip, "rb") as fh:
        r = http.post(
            f"{serve_app}/patients",
            files=[("files", ("p.zip", fh, "application/zip"))],
            headers={"Origin": "https://evil.example"},
            timeout=60,
        )
    assert r.status_code == 403 and r.json()["error"] == "origin"
    r = http.post(f"{serve_app}/jobs", json={"patient_id": "x"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # a text/plain "JSON" body (what a cross-site form can send) is refused even from the same origin
    r = http.post(
        f"{serve_app}/patients/anyone/structures",
        content=b'{"method": "edit"}',
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    r = http.post(f"{serve_app}/jobs", content=b'{"patient_id": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 422  # FastAPI reads a model body only from JSON
    # DNS rebinding: the right address under a foreign name
    r = http.get(f"{serve_app}/jobs", headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 400 and r.json()["error"] == "host"
    assert stored_files(serve_settings.data_dir) == before  # nothing stored changed


@pytest.mark.ray
def test_every_answer_carries_the_security_headers(serve_app):
    for path in ("/health", "/jobs", "/no/such/route", "/ui"):
        r = http.get(f"{serve_app}{path}")
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-frame-options"] == "DENY", path
    assert http.get(f"{serve_app}/jobs").headers["cache-control"] == "no-store"
    assert http.get(f"{serve_app}/ui").headers["cache-control"] == "no-cache"  # the page's own setting kept
    r = http.post(f"{serve_app}/jobs", json={}, headers={"Origin": "https://evil.example"})
    assert r.headers["x-content-type-options"] == "nosniff"


def _asgi(policy, body_chunks, headers):
    """Run GuardMiddleware around an app that reads the whole body and echoes its length."""
    import asyncio

    from rayrt.service.http_guard import GuardMiddleware

    async def app(scope, receive, send):
        n, more = 0, True
        while more:
            m = await receive()
            n += len(m.get("body", b""))
            more = m.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(n).encode()})

    msgs = [
        {"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1} for i, c in enumerate(body_chunks)
    ]
    sent = []

    async def receive():
        return msgs.pop(0)

    async def send(m):
        sent.append(m)

    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(GuardMiddleware(app, lambda: policy)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_body_limit_declared_and_streamed():
    policy = GuardPolicy.for_bind("127.0.0.1", max_body_bytes=1000)
    host = {"Host": "127.0.0.1:8000"}
    assert _asgi(policy, [b"x" * 600, b"x" * 400], host) == (200, b"1000")
    status, body = _asgi(policy, [b"x" * 600, b"x" * 401], host)  # chunked: no Content-Length
    assert status == 413 and b"too_large" in body
    status, _ = _asgi(policy, [b"x" * 10], {**host, "Content-Length": "5000000000"})  # refused before reading
    assert status == 413
    status, body = _asgi(policy, [b"x" * 10], {**host, "Transfer-Encoding": "chunked"})  # no length stated
    assert status == 411 and b"Content-Length" in body


@pytest.mark.ray
def test_the_service_refuses_a_body_above_its_limit_before_reading_it(serve_app):
    """A client declaring a 5 GB upload gets 413 at once (nothing of the body is sent)."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(serve_app)

    def first_line(framing: str) -> str:
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            s.sendall(
                f"POST /patients HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/zip\r\n"
                f"{framing}\r\n\r\n".encode()
            )
            return s.recv(4096).decode("latin-1")

    head = first_line("Content-Length: 5000000000")
    assert head.startswith("HTTP/1.1 413"), head[:200]
    # a body of unstated length: Serve's proxy would buffer all of it before any limit applies
    head = first_line("Transfer-Encoding: chunked")
    assert head.startswith("HTTP/1.1 411"), head[:200]
    assert http.get(f"{serve_app}/health").status_code == 200
