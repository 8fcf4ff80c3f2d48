"""Imports every CLI module so that its commands register on :data:`rayrt.cli.app.app`."""

from rayrt.cli import schema  # noqa: F401
from rayrt.cli import qa  # noqa: F401
from rayrt.cli import service  # noqa: F401
from rayrt.cli import imaging  # noqa: F401
from rayrt.cli import contour  # noqa: F401
from rayrt.cli import plan  # noqa: F401
from rayrt.cli import machine  # noqa: F401
from rayrt.cli import demo  # noqa: F401
from rayrt.cli import warmup  # noqa: F401
