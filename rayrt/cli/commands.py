"""Imports every CLI module so that its commands register on :data:`rayrt.cli.app.app`."""

from rayrt.cli import (
    audit,  # noqa: F401
    contour,  # noqa: F401
    demo,  # noqa: F401
    imaging,  # noqa: F401
    machine,  # noqa: F401
    plan,  # noqa: F401
    qa,  # noqa: F401
    report,  # noqa: F401
    schema,  # noqa: F401
    service,  # noqa: F401
    users,  # noqa: F401
    warmup,  # noqa: F401
)
