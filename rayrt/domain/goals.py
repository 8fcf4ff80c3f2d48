"""Clinical goals: what a plan must achieve, as clinics write them, with a priority rank.

A goal is one dose-volume criterion on one structure::

    {structure: SpinalCord, metric: D0.1cc, op: "<=", value: 45, rank: 1}
    {structure: PTV70,      metric: D99,    op: ">=", value: 66.5, rank: 2}
    {structure: Parotid_L,  metric: mean,   op: "<=", value: 26, rank: 3}
    {structure: Lung,       metric: V20Gy,  op: "<=", value: 30, rank: 3}      # % of the volume

Metrics (doses in Gy, total course; volumes in % of the structure or cc):

============== ======================================================= =========
metric         meaning                                                 value in
============== ======================================================= =========
``D<x>``       minimum dose of the hottest x % of the volume (D95)     Gy
``D<x>cc``     minimum dose of the hottest x cc (D0.1cc, D0.03cc)      Gy
``max``        maximum voxel dose                                      Gy
``min``        minimum voxel dose                                      Gy
``mean``       mean dose                                               Gy
``V<x>Gy``     volume receiving at least x Gy (V20Gy)                  % (or cc with ``unit: cc``)
============== ======================================================= =========

Ranks: 1 is the most important. Automatic planning (:mod:`rayrt.optimize.autoplan`) meets the goals
rank by rank and never gives up a higher rank's goal for a lower one; the goal report says which
goals were missed, by how much, and what limited them.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ClinicalGoal", "GoalKind", "parse_metric"]

_D_PCT = re.compile(r"^D(\d+(?:\.\d+)?)%?$", re.IGNORECASE)
_D_CC = re.compile(r"^D(\d+(?:\.\d+)?)cc$", re.IGNORECASE)
_V_GY = re.compile(r"^V(\d+(?:\.\d+)?)Gy$", re.IGNORECASE)


class GoalKind(str, Enum):
    """What a metric measures."""

    dose_at_volume_pct = "dose_at_volume_pct"  # D<x>: Gy at x % of the volume
    dose_at_volume_cc = "dose_at_volume_cc"  # D<x>cc: Gy at x cc
    max = "max"
    min = "min"
    mean = "mean"
    volume_at_dose = "volume_at_dose"  # V<x>Gy: % (or cc) receiving >= x Gy


def parse_metric(metric: str) -> tuple[GoalKind, float | None]:
    """(kind, parameter) of a metric string: ``D95`` -> (dose_at_volume_pct, 95), ``D0.1cc`` ->
    (dose_at_volume_cc, 0.1), ``V20Gy`` -> (volume_at_dose, 20), ``mean`` -> (mean, None).
    Raises ValueError for anything else."""
    m = metric.strip()
    low = m.lower()
    if low in ("max", "dmax"):
        return GoalKind.max, None
    if low in ("min", "dmin"):
        return GoalKind.min, None
    if low in ("mean", "dmean"):
        return GoalKind.mean, None
    if r := _D_CC.match(m):
        return GoalKind.dose_at_volume_cc, float(r.group(1))
    if r := _D_PCT.match(m):
        x = float(r.group(1))
        if x > 100:
            raise ValueError(f"metric {metric!r}: a volume above 100 %")
        return GoalKind.dose_at_volume_pct, x
    if r := _V_GY.match(m):
        return GoalKind.volume_at_dose, float(r.group(1))
    raise ValueError(
        f"unknown goal metric {metric!r}: use D<x> (e.g. D95), D<x>cc (D0.1cc), max, min, mean or V<x>Gy (V20Gy)"
    )


class ClinicalGoal(BaseModel):
    """One clinical goal: ``metric`` of ``structure`` ``op`` ``value``, with its priority ``rank``."""

    model_config = ConfigDict(extra="forbid")

    structure: str = Field(min_length=1, description="structure name as in the structure set")
    metric: str = Field(description="D<x> (% volume), D<x>cc, max, min, mean or V<x>Gy")
    op: Literal[">=", "<="] = Field(description="'>=' for a minimum (coverage), '<=' for a limit")
    value: float = Field(ge=0, description="Gy for dose metrics; % of the volume (or cc, see unit) for V<x>Gy")
    unit: Literal["%", "cc"] | None = Field(
        default=None, description="V<x>Gy only: the value as % of the volume (default) or cc"
    )
    rank: int = Field(default=2, ge=1, le=10, description="priority: 1 is the most important")

    @model_validator(mode="after")
    def _check(self) -> "ClinicalGoal":
        kind, _ = parse_metric(self.metric)
        if self.unit is not None and kind is not GoalKind.volume_at_dose:
            raise ValueError(f"'unit' applies to V<x>Gy metrics only, not {self.metric!r}")
        if kind is GoalKind.volume_at_dose and self.unit != "cc" and self.value > 100:
            raise ValueError(f"{self.metric} {self.op} {self.value}: a volume above 100 %")
        return self

    @property
    def kind(self) -> GoalKind:
        return parse_metric(self.metric)[0]

    @property
    def parameter(self) -> float | None:
        """x of D<x>, D<x>cc or V<x>Gy (None for max, min, mean)."""
        return parse_metric(self.metric)[1]

    @property
    def is_dose(self) -> bool:
        """True when the value is a dose (Gy), False for a volume (V<x>Gy)."""
        return self.kind is not GoalKind.volume_at_dose

    @property
    def is_lower_bound(self) -> bool:
        """A minimum on the dose (coverage goal): D<x> >= value, min >= value, mean >= value,
        or V<x>Gy >= value."""
        return self.op == ">="

    def label(self) -> str:
        unit = "Gy" if self.is_dose else (self.unit or "%")
        return f"{self.structure} {self.metric} {self.op} {self.value:g} {unit}"
