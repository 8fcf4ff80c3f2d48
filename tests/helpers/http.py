"""``http``: an httpx client for the services the tests start, signed in as each one's admin.

Every service started in a test session bootstraps its admin user on first start and keeps the
token in the session's token file (``$RAYRT_TOKEN_FILE``, set by conftest to a private folder;
:mod:`rayrt.service.credentials`). :class:`SessionTokens` adds ``Authorization: Bearer`` with the
token of the request's server unless the request names one itself; tests of authentication
itself use plain ``httpx`` (no token) or explicit headers.
"""

from __future__ import annotations

import httpx

from rayrt.service.credentials import token_for

__all__ = ["SessionTokens", "add_user", "bearer", "http"]


class SessionTokens(httpx.Auth):
    def auth_flow(self, request: httpx.Request):
        if "authorization" not in request.headers:
            token = token_for(f"{request.url.scheme}://{request.url.host}:{request.url.port}")
            if token:
                request.headers["Authorization"] = f"Bearer {token}"
        yield request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


http = httpx.Client(auth=SessionTokens(), timeout=5.0)


def add_user(url: str, name: str, role: str) -> str:
    """A new user of the service at ``url``, added by its admin (POST /users); returns the token."""
    r = http.post(f"{url}/users", json={"name": name, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["token"]
