"""The service's users: a name, a role and a bearer token stored only as its SHA-256 hash.

A token is ``rrt_`` followed by 43 URL-safe characters (32 random bytes from :mod:`secrets`,
256 bits): it is shown once, when the user is added, and the store keeps only
``sha256(token)``. With that much entropy a hash needs no salt or key stretching (nobody can
search 2^256 candidates); a stolen ``users.json`` grants nothing.

Roles are ordered: a role may do everything the roles below it may.

* ``clinician``: upload patients, delineate, order and follow plans, review and download them.
* ``physicist``: also release plans for treatment (book them on a machine) and change a
  treatment machine's status.
* ``admin``: also users and the cluster view.

The table lives in the service's store at ``auth/users.json`` (:class:`UserStore`), written
atomically; ``rayrt users add|list|revoke`` edits it on the server's store and the running
service sees a change within :data:`RELOAD_S`. A revoked user keeps its record (name, role,
when added and revoked) and its name can be given to a new user.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from datetime import datetime, timezone
from enum import Enum

from pydantic import BaseModel, Field

from rayrt.domain.errors import InputError

log = logging.getLogger("rayrt.service")

__all__ = [
    "RELOAD_S",
    "TOKEN_PREFIX",
    "Role",
    "User",
    "UserStore",
    "UserTable",
    "hash_token",
    "new_token",
]

USERS_FILE = "auth/users.json"
TOKEN_PREFIX = "rrt_"
#: the running service re-reads the user table at most this often (s): a revocation takes effect within it
RELOAD_S = 2.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(str, Enum):
    """What a user may do; each role includes the ones before it."""

    clinician = "clinician"
    physicist = "physicist"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class User(BaseModel):
    """One user of the service (never the token itself)."""

    name: str
    role: Role
    token_sha256: str = Field(description="hex SHA-256 of the bearer token")
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class UserTable(BaseModel):
    """``auth/users.json``: every user ever added, revoked ones included."""

    users: list[User] = Field(default_factory=list)

    def active(self) -> list[User]:
        return [u for u in self.users if u.active]

    def by_hash(self) -> dict[str, User]:
        return {u.token_sha256: u for u in self.active()}


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(
            f"user name {name!r} is not valid: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            kind="user",
            field="name",
            status=422,
        )
    return name


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InputError(
            f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}",
            kind="user",
            field="role",
            status=422,
        ) from None


class UserStore:
    """The user table in a :class:`rayrt.service.store.Store` (``auth/users.json``).

    ``authenticate`` answers from a copy re-read at most every :data:`RELOAD_S` seconds, so a
    request costs no store read; ``add`` and ``revoke`` read, change and write the file at once.
    """

    def __init__(self, store: object, reload_s: float = RELOAD_S):
        self.store = store
        self.reload_s = reload_s
        self._table: UserTable | None = None
        self._by_hash: dict[str, User] = {}
        self._loaded = -float("inf")

    def read(self) -> UserTable:
        try:
            data = self.store.read_bytes(USERS_FILE)  # type: ignore[attr-defined]
        except FileNotFoundError:
            return UserTable()
        return UserTable.model_validate_json(data)

    def _write(self, table: UserTable) -> None:
        self.store.write_json(USERS_FILE, table)  # type: ignore[attr-defined]
        self._remember(table)

    def _remember(self, table: UserTable) -> None:
        self._table, self._by_hash, self._loaded = table, table.by_hash(), time.monotonic()

    def list(self) -> list[User]:
        return self.read().users

    def add(self, name: str, role: Role | str) -> tuple[User, str]:
        """A new user and its token (the only time the token exists outside the client)."""
        name = check_user_name(name)
        role = role if isinstance(role, Role) else parse_role(role)
        table = self.read()
        if any(u.name == name for u in table.active()):
            raise InputError(
                f"user {name!r} exists; revoke it first to give the name a new token",
                kind="conflict",
                field="name",
                status=409,
            )
        token = new_token()
        user = User(name=name, role=role, token_sha256=hash_token(token), created_at=datetime.now(timezone.utc))
        self._write(UserTable(users=[*table.users, user]))
        return user, token

    def revoke(self, name: str) -> User:
        """Revoke the active user ``name`` (404 when there is none)."""
        table = self.read()
        for i, u in enumerate(table.users):
            if u.name == name and u.active:
                revoked = u.model_copy(update={"revoked_at": datetime.now(timezone.utc)})
                users = [*table.users[:i], revoked, *table.users[i + 1 :]]
                self._write(UserTable(users=users))
                return revoked
        raise InputError(f"no active user {name!r}", kind="not_found", field="name", status=404)

    def authenticate(self, token: str | None) -> User | None:
        """The active user whose token this is, or None."""
        if not token or not token.startswith(TOKEN_PREFIX):
            return None
        if time.monotonic() - self._loaded > self.reload_s:
            try:
                self._remember(self.read())
            except Exception:  # a damaged table: keep the last good one (none at first: nobody) and say so
                log.error("users: %s cannot be read; keeping the last good user table", USERS_FILE, exc_info=True)
                self._loaded = time.monotonic()
        return self._by_hash.get(hash_token(token))
