"""``rayrt users add|list|revoke`` and ``rayrt login``: who may use a service, and this client's token.

``users`` edits the user table of a store directly (``--data``, default as ``rayrt serve``: the
settings file, ``$RAYRT_DATA_DIR``, ./rayrt-data), so it works on the server's machine before
anyone can sign in; a running service sees the change within a few seconds
(:data:`rayrt.service.users.RELOAD_S`). ``add`` prints the new token once; nothing keeps it but the
hash. ``login`` checks a token against a server (``GET /me``) and stores it for that server in the
client's token file (:mod:`rayrt.service.credentials`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from rayrt.cli.app import app

users_app = typer.Typer(
    help="Users of a service: add (prints the token once), list, revoke. Works on the store (--data).",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")

_DATA_HELP = "the service's store (default: as rayrt serve: settings file, $RAYRT_DATA_DIR, ./rayrt-data)"


def _users(data: Optional[str], config: Optional[Path]):
    from rayrt.service.settings import load_settings
    from rayrt.service.store import Store
    from rayrt.service.users import UserStore

    return UserStore(Store(load_settings(config, data_dir=data).data_dir))


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="user name (letters, digits, . _ @ -)"),
    role: str = typer.Option(..., "--role", help="clinician | physicist | admin"),
    data: Optional[str] = typer.Option(None, "--data", help=_DATA_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="settings file"),
) -> None:
    """Add a user; prints its token (shown this once: hand it over privately)."""
    from rayrt.service.users import parse_role

    user, token = _users(data, config).add(name, parse_role(role))
    typer.echo(f"added {user.name} ({user.role.value}); token (shown once):", err=True)
    typer.echo(token)


@users_app.command("list")
def users_list(
    data: Optional[str] = typer.Option(None, "--data", help=_DATA_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="settings file"),
) -> None:
    """Every user: name, role, added, revoked."""
    users = _users(data, config).list()
    typer.echo(f"{'user':<24} {'role':<10} {'added':<25} revoked")
    for u in users:
        revoked = u.revoked_at.isoformat(timespec="seconds") if u.revoked_at else "-"
        typer.echo(f"{u.name:<24} {u.role.value:<10} {u.created_at.isoformat(timespec='seconds'):<25} {revoked}")


@users_app.command("revoke")
def users_revoke(
    name: str = typer.Argument(..., help="user name"),
    data: Optional[str] = typer.Option(None, "--data", help=_DATA_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="settings file"),
) -> None:
    """Revoke a user's token (the running service refuses it within seconds)."""
    u = _users(data, config).revoke(name)
    typer.echo(f"revoked {u.name} ({u.role.value})")


@app.command("login")
def login_cmd(
    server: Optional[str] = typer.Option(
        None, "--server", help="server URL (default: $RAYRT_SERVER or http://127.0.0.1:8000)"
    ),
    token_stdin: bool = typer.Option(False, "--token-stdin", help="read the token from standard input"),
) -> None:
    """Check a token against the server and keep it for this server in the token file (0600)."""
    from rayrt.cli.service import _call, _client
    from rayrt.domain.errors import InputError
    from rayrt.service.credentials import save_token
    from rayrt.service.settings import server_url

    url = server_url(server)
    token = sys.stdin.readline().strip() if token_stdin else typer.prompt("token", hide_input=True).strip()
    if not token:
        raise InputError("no token given", field="token")
    with _client(url) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        me = _call(client, "GET", "/me").json()
    path = save_token(url, token)
    typer.echo(f"signed in to {url} as {me['name']} ({me['role']}); token kept in {path}")
