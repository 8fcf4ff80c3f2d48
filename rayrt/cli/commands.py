"""Imports every CLI module so that its commands register on :data:`rayrt.cli.app.app`."""

from rayrt.cli import schema  # noqa: F401
