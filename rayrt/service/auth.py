"""Who is asking: bearer-token authentication and the role each HTTP route needs.

Every route except the public ones (:data:`PUBLIC_ROUTES`: ``/health``, the web page's shell and
static files, where one signs in, and ``/session``, the sign-in itself) needs a user
(:mod:`rayrt.service.users`). A request names its user by

* ``Authorization: Bearer rrt_...`` (the CLI, scripts), or
* the ``rayrt_session`` cookie that ``POST /session`` sets from a token (the web page: a browser
  cannot add a header to a page load or an EventSource). The cookie is ``HttpOnly`` (no script
  reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure`` over HTTPS; with the
  Origin check of :mod:`rayrt.service.http_guard` no other origin can act with it.

Two layers, so that a route without a rule cannot exist by accident and an anonymous request
never gets as far as its body being read:

* :class:`AuthMiddleware` (ASGI) answers 401 (``WWW-Authenticate: Bearer``) to any request for a
  non-public path that carries no valid token, before the route or its body parsing runs;
* :func:`requires` is the one FastAPI dependency each route declares: it answers 401 the same way
  and 403 when the user's role is below the route's (``tests/service/test_auth.py`` walks the
  app's route table: a route that is neither public nor declares it fails).

With ``auth: false`` in the service settings (only allowed on a loopback bind) every request acts
as the built-in ``local`` admin. The authenticator in force is module state set by the ingress
replica (:func:`set_authenticator`), like the guard policy.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from fastapi import Depends, Request

from rayrt.domain.errors import InputError
from rayrt.service.http_guard import is_loopback, scope_headers, send_error
from rayrt.service.users import Role, User, UserStore

__all__ = [
    "COOKIE",
    "PUBLIC_ROUTES",
    "AuthMiddleware",
    "Authenticator",
    "RoleRule",
    "current_authenticator",
    "check_bind",
    "is_public",
    "request_user",
    "requires",
    "set_authenticator",
]

COOKIE = "rayrt_session"
#: (method, path) of the routes anyone may call: nothing here reads or changes patient data
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/"),
        ("GET", "/ui"),
        ("GET", "/ui/"),
        ("GET", "/ui/static/{name:path}"),
        ("POST", "/session"),
        ("DELETE", "/session"),
    }
)
_PUBLIC_PATHS = frozenset(p for _, p in PUBLIC_ROUTES if "{" not in p)
_PUBLIC_PREFIXES = ("/ui/static/",)

LOCAL_ADMIN = User(name="local", role=Role.admin, token_sha256="", created_at=datetime(1970, 1, 1, tzinfo=timezone.utc))


def is_public(path: str) -> bool:
    """Whether a request path is one of the public routes' (methods are checked by the routes)."""
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


class Authenticator:
    """Tokens -> users: the store's user table (``users``); ``open=True`` (settings ``auth: false``):
    every request is the local admin; neither: nobody is let in."""

    def __init__(self, users: UserStore | None = None, *, open: bool = False):
        self.users = users
        self.open = open

    def user_for(self, headers: dict[str, str]) -> User | None:
        """The user a request's headers (names lower case) name, or None."""
        if self.open:
            return LOCAL_ADMIN
        if self.users is None:
            return None
        return self.users.authenticate(bearer_token(headers))


def bearer_token(headers: dict[str, str]) -> str | None:
    """The token of ``Authorization: Bearer ...``, else of the session cookie."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


#: the authenticator in force in this process (a one-element list: code shipped by value to a
#: Serve replica still changes this module's state); until the ingress sets one nobody is let in
_AUTH: list[Authenticator] = [Authenticator()]


def set_authenticator(auth: Authenticator) -> None:
    _AUTH[0] = auth


def current_authenticator() -> Authenticator:
    return _AUTH[0]


def _unauthorized() -> InputError:
    return InputError(
        "sign in: send 'Authorization: Bearer <token>' (the CLI reads $RAYRT_TOKEN or the token file "
        "`rayrt login` writes; an admin gives tokens with `rayrt users add`)",
        kind="unauthorized",
        status=401,
    )


def _user_of_scope(scope: dict, auth: Authenticator) -> User | None:
    """The request's user, authenticated once per request (kept in the ASGI scope's state)."""
    state = scope.setdefault("state", {})
    if "rayrt_user" not in state:
        state["rayrt_user"] = auth.user_for(scope_headers(scope))
    return state["rayrt_user"]


class RoleRule:
    """The dependency of a route that needs ``role``: the request's user, or 401 / 403."""

    def __init__(self, role: Role):
        self.role = role

    def __call__(self, request: Request) -> User:
        user = request_user(request)
        if not user.role.allows(self.role):
            raise InputError(
                f"user {user.name!r} ({user.role.value}) may not {request.method} {request.url.path}: "
                f"it needs the {self.role.value} role",
                kind="forbidden",
                status=403,
            )
        return user


def request_user(request: Request) -> User:
    """The user a request acts as (after its route's rule let it in)."""
    user = _user_of_scope(request.scope, current_authenticator())
    if user is None:
        raise _unauthorized()
    return user


def check_bind(host: str, auth: bool) -> None:
    """InputError unless authentication is on or ``host`` is a loopback address: a service without
    authentication must not be reachable from other machines."""
    if not auth and not is_loopback(host):
        raise InputError(
            f"refusing to serve on {host} with authentication off ('auth: false'): bind 127.0.0.1 or turn auth on",
            kind="settings",
            field="auth",
        )


def requires(role: Role) -> list[Any]:
    """The ``dependencies=`` of a route that needs ``role`` (one rule per route)."""
    return [Depends(RoleRule(role))]


class AuthMiddleware:
    """ASGI: 401 for a non-public path without a valid token, before the route reads anything."""

    def __init__(self, app: Any, authenticator: Callable[[], Authenticator] = current_authenticator):
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if _user_of_scope(scope, self.authenticator()) is not None:
            await self.app(scope, receive, send)
            return
        err = _unauthorized()
        await send_error(send, 401, err.kind, err.message, {"WWW-Authenticate": 'Bearer realm="rayrt"'})
