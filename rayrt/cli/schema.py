"""``rayrt schema``: JSON schemas of the input documents."""

from __future__ import annotations

import json
from enum import Enum

import typer

from rayrt.cli.app import app


class SchemaName(str, Enum):
    order = "order"
    machine = "machine"
    plan = "plan"
    planning = "planning"


@app.command("schema")
def schema(name: SchemaName = typer.Argument(..., help="which document: order, machine, plan or planning")) -> None:
    """Print the JSON schema of a medical order, a machine model, a plan or the planning options."""
    if name is SchemaName.planning:
        from rayrt.domain.planning import PlanningRequest as model
    elif name is SchemaName.order:
        from rayrt.domain.order import MedicalOrder as model
    elif name is SchemaName.machine:
        from rayrt.domain.machine import MachineModel as model
    else:
        from rayrt.domain.plan import Plan as model
    typer.echo(json.dumps(model.model_json_schema(), indent=2))
