"""The Typer application object and the error handling shared by every command."""

from __future__ import annotations

import sys

import typer

from rayrt.domain.errors import InputError, RayrtError

app = typer.Typer(
    name="rayrt",
    help="rayrt: elastic cloud radiotherapy treatment planning on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """rayrt: elastic cloud radiotherapy treatment planning on Ray."""


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one readable error line and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI, turning rayrt's input errors into one line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except InputError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        return 2
    except RayrtError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:  # Typer's (vendored click) usage errors carry show() and exit_code
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show(file=sys.stderr)
            return int(exc.exit_code)
        raise
    return 0
