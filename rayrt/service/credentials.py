"""The client side of authentication: which token the CLI sends to which server.

``$RAYRT_TOKEN`` wins; otherwise the token file, ``$RAYRT_TOKEN_FILE`` (default
``$XDG_CONFIG_HOME/rayrt/tokens.json`` or ``~/.config/rayrt/tokens.json``), maps a server URL to its token::

    {"http://127.0.0.1:8000": "rrt_..."}

It is written by ``rayrt login`` and, on a service's first start, by ``rayrt serve`` / ``rayrt
demo`` for the admin token they create; created 0600 in a 0700 directory, and refused when group
or others may read it (a token is a password). No Ray or HTTP code here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rayrt.domain.errors import InputError
from rayrt.service.local_files import write_atomic

__all__ = ["save_token", "token_for", "tokens_path"]


def tokens_path() -> Path:
    if os.environ.get("RAYRT_TOKEN_FILE"):
        return Path(os.environ["RAYRT_TOKEN_FILE"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rayrt" / "tokens.json"


def _key(server: str) -> str:
    return server.rstrip("/")


def _read(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    if path.stat().st_mode & 0o077:
        raise InputError(
            f"token file {path} may be read by other users: `chmod 600 {path}`", kind="settings", field="token"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"token file {path} is not readable JSON: {exc}", kind="settings", field="token") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(f"token file {path} must map server URLs to tokens", kind="settings", field="token")
    return data


def token_for(server: str) -> str | None:
    """The token to send to ``server``: ``$RAYRT_TOKEN``, else the token file's entry, else None."""
    env = os.environ.get("RAYRT_TOKEN", "").strip()
    if env:
        return env
    return _read(tokens_path()).get(_key(server))


def save_token(server: str, token: str) -> Path:
    """Store ``token`` as the one for ``server`` (atomically, 0600); returns the file."""
    path = tokens_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = _read(path)
    tokens[_key(server)] = token
    write_atomic(path, json.dumps(tokens, indent=1).encode())  # 0600
    return path
