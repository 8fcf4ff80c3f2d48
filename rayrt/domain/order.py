"""The medical order: prescription, per-structure objectives and constraints, reference DVHs.

Doses are total course doses in Gy; volumes in percent of the structure volume.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rayrt.domain.errors import InputError, first_error
from rayrt.domain.goals import ClinicalGoal


class ObjectiveKind(str, Enum):
    """Kinds of planning objectives / constraints (one per registry entry in ``rayrt.optimize``)."""

    min_dose = "min_dose"  # every voxel >= dose_gy
    max_dose = "max_dose"  # every voxel <= dose_gy
    min_dvh = "min_dvh"  # at least volume_pct % receives >= dose_gy  (D{volume_pct} >= dose_gy)
    max_dvh = "max_dvh"  # at most volume_pct % receives > dose_gy    (D{volume_pct} <= dose_gy)
    mean_dose = "mean_dose"  # mean dose <= dose_gy
    geud = "geud"  # generalised EUD with exponent a <= dose_gy (organs) or >= (targets, a < 0)
    squared_deviation = "squared_deviation"  # mean (d - dose_gy)^2
    squared_overdose = "squared_overdose"  # mean max(d - dose_gy, 0)^2
    squared_underdose = "squared_underdose"  # mean max(dose_gy - d, 0)^2
    dose_mimicking = (
        "dose_mimicking"  # mean max(|d - d_ref| - dose_gy, 0)^2: follow a reference dose per voxel within dose_gy
    )


_NEEDS_VOLUME = {ObjectiveKind.min_dvh, ObjectiveKind.max_dvh}


class ObjectiveSpec(BaseModel):
    """One objective or constraint on one structure."""

    model_config = ConfigDict(extra="forbid")

    structure: str = Field(min_length=1, description="structure name as in the structure set")
    kind: ObjectiveKind
    dose_gy: float = Field(ge=0, description="dose level in Gy (total course)")
    volume_pct: float | None = Field(default=None, ge=0, le=100, description="volume in % for min_dvh / max_dvh")
    a: float | None = Field(default=None, description="gEUD exponent (a > 1 for serial organs, a < 0 for targets)")
    priority: float = Field(default=1.0, gt=0, description="relative weight of this objective")
    hard: bool = Field(default=False, description="a constraint to honour, not just a weighted objective")

    @model_validator(mode="after")
    def _check(self) -> "ObjectiveSpec":
        if self.kind in _NEEDS_VOLUME and self.volume_pct is None:
            raise ValueError(f"objective kind '{self.kind.value}' needs volume_pct (0-100)")
        if self.kind is ObjectiveKind.geud and (self.a is None or self.a == 0):
            raise ValueError("objective kind 'geud' needs a non-zero exponent a")
        return self


class Normalization(BaseModel):
    """How the final plan is scaled: e.g. D95 of PTV = prescription dose."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(default="D95", pattern=r"^(D\d+(\.\d+)?|mean|none)$", description="'D<vol%>', 'mean' or 'none'")
    structure: str | None = Field(default=None, description="defaults to the prescription target")
    value_pct: float = Field(default=100.0, gt=0, description="percent of the prescription dose the metric must equal")

    @property
    def volume_pct(self) -> float | None:
        m = re.fullmatch(r"D(\d+(?:\.\d+)?)", self.metric)
        return float(m.group(1)) if m else None


class Prescription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, description="target structure name")
    total_dose_gy: float = Field(gt=0, description="total prescribed dose in Gy")
    fractions: int = Field(default=1, ge=1, description="number of fractions")
    normalization: Normalization = Field(default_factory=Normalization)

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.total_dose_gy / self.fractions


class DVHPoint(BaseModel):
    dose_gy: float = Field(ge=0)
    volume_pct: float = Field(ge=0, le=100)


HEAD_AND_NECK_EXAMPLE: dict = {
    "name": "oropharynx SIB 70/63/56 Gy in 35 fractions",
    "prescription": {
        "target": "PTV70",
        "total_dose_gy": 70.0,
        "fractions": 35,
        "normalization": {"metric": "D95", "value_pct": 100.0},
    },
    "dose_levels": {"PTV63": 63.0, "PTV56": 56.0},
    "goals": [
        {"structure": "SpinalCord", "metric": "D0.1cc", "op": "<=", "value": 45.0, "rank": 1},
        {"structure": "Brainstem", "metric": "D0.1cc", "op": "<=", "value": 50.0, "rank": 1},
        {"structure": "Mandible", "metric": "D0.1cc", "op": "<=", "value": 73.5, "rank": 1},
        {"structure": "PTV70", "metric": "D99", "op": ">=", "value": 66.5, "rank": 2},
        {"structure": "PTV63", "metric": "D99", "op": ">=", "value": 59.9, "rank": 2},
        {"structure": "PTV56", "metric": "D99", "op": ">=", "value": 53.2, "rank": 2},
        {"structure": "PTV70", "metric": "D2", "op": "<=", "value": 75.0, "rank": 3},
        {"structure": "LeftParotid", "metric": "mean", "op": "<=", "value": 26.0, "rank": 3},
        {"structure": "RightParotid", "metric": "mean", "op": "<=", "value": 26.0, "rank": 3},
        {"structure": "Larynx", "metric": "mean", "op": "<=", "value": 45.0, "rank": 3},
        {"structure": "Esophagus", "metric": "V45Gy", "op": "<=", "value": 33.0, "rank": 4},
    ],
    "notes": "Simultaneous integrated boost: each PTV at its level (a voxel in two PTVs belongs to the higher "
    "level); organ maxima rank 1, coverage rank 2, hot spot and parallel organs rank 3-4. rayrt builds the "
    "helper structures (organ minus PTVs, normal-tissue fall-off, PTVs cropped from the skin) and the objectives.",
}
"""A worked head-and-neck order written as clinical goals (the schema's example: ``rayrt schema order``)."""


class MedicalOrder(BaseModel):
    """What the physician orders for one patient: a prescription, and either clinical goals with
    priority ranks (planned automatically) or an expert objective list (or both: the objectives
    drive the optimiser, the goals are judged and reported)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [HEAD_AND_NECK_EXAMPLE]})

    name: str = Field(default="order", description="a label for the order")
    prescription: Prescription
    objectives: list[ObjectiveSpec] = Field(default_factory=list)
    reference_dvh: dict[str, list[DVHPoint]] = Field(
        default_factory=dict, description="optional reference cumulative DVH curve per structure"
    )
    cover: list[str] = Field(
        default_factory=list,
        description="structures every beam's beamlets must cover besides the targets (the prescription target and "
        "every structure with a minimum-dose-type objective are covered anyway), e.g. an elective CTV",
    )
    dose_levels: dict[str, float] = Field(
        default_factory=dict,
        description="dose level (Gy, course) of each target of a simultaneous integrated boost, e.g. "
        "{PTV70: 70, PTV63: 63, PTV56: 56}; the prescription target's level is the prescription dose. A voxel in "
        "two targets belongs to the higher level",
    )
    goals: list[ClinicalGoal] = Field(
        default_factory=list,
        description="clinical goals with priority ranks (rayrt.domain.goals). An order with goals and no "
        "objectives is planned automatically from its goals (rayrt.optimize.autoplan); with objectives, the "
        "objectives drive the optimiser and the goals are reported",
    )
    notes: str = ""

    @field_validator("dose_levels")
    @classmethod
    def _check_levels(cls, levels: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        rx = info.data.get("prescription")
        if rx is None:
            return levels
        for name, level in levels.items():
            if not level > 0:
                raise ValueError(f"dose_levels: {name} has level {level} Gy; a target's level must be > 0 Gy")
            if level > rx.total_dose_gy * (1 + 1e-9):
                raise ValueError(
                    f"dose_levels: {name} at {level:g} Gy is above the prescription ({rx.total_dose_gy:g} Gy to "
                    f"{rx.target}); the prescription is the highest level"
                )
            if name == rx.target and abs(level - rx.total_dose_gy) > 1e-6:
                raise ValueError(
                    f"dose_levels: the prescription target {name} is at {level:g} Gy but prescribed "
                    f"{rx.total_dose_gy:g} Gy"
                )
        return levels

    def target_levels(self) -> dict[str, float]:
        """Every target with its dose level (Gy), highest first: the prescription target at the
        prescription dose, then ``dose_levels``."""
        levels = {self.prescription.target: self.prescription.total_dose_gy, **self.dose_levels}
        return dict(sorted(levels.items(), key=lambda kv: -kv[1]))

    def structure_references(self) -> list[tuple[str, str]]:
        """Every structure the order names, as (field path in the order, name), in order."""
        refs = [("prescription.target", self.prescription.target)]
        if self.prescription.normalization.structure:
            refs.append(("prescription.normalization.structure", self.prescription.normalization.structure))
        refs += [(f"objectives.{n}.structure", o.structure) for n, o in enumerate(self.objectives)]
        refs += [(f"reference_dvh.{name}", name) for name in self.reference_dvh]
        refs += [(f"cover.{n}", name) for n, name in enumerate(self.cover)]
        refs += [(f"dose_levels.{name}", name) for name in self.dose_levels]
        refs += [(f"goals.{n}.structure", g.structure) for n, g in enumerate(self.goals)]
        return refs

    def structure_names(self) -> set[str]:
        return {name for _, name in self.structure_references()}

    def check_structures(self, available: Iterable[str]) -> None:
        """Raise :class:`InputError` when the order names a structure the patient does not have;
        its ``field`` is where the first unknown name stands (``goals.3.structure``)."""
        available = set(available)
        missing = sorted(self.structure_names() - available)
        if missing:
            where = next(path for path, name in self.structure_references() if name not in available)
            raise InputError(
                f"order names unknown structure(s) {', '.join(repr(m) for m in missing)}; "
                f"the patient has: {', '.join(sorted(available)) or 'no structures'}",
                kind="order",
                field=where,
                status=422,
            )


def _format_validation_error(exc: ValidationError, source: str) -> InputError:
    loc, msg = first_error(exc)
    loc = loc or "(root)"
    return InputError(f"invalid order {source}: field '{loc}': {msg}", kind="order", field=loc, status=422)


def parse_order(data: object, source: str = "") -> MedicalOrder:
    """Validate an already-parsed order (a mapping), raising :class:`InputError` with the field path."""
    if not isinstance(data, dict):
        raise InputError(
            f"invalid order {source}: expected a mapping with 'prescription' and 'objectives'", kind="order"
        )
    try:
        return MedicalOrder.model_validate(data)
    except ValidationError as exc:
        raise _format_validation_error(exc, source) from None


def load_order(path: str | Path) -> MedicalOrder:
    """Load an order from a ``.yaml``/``.yml`` or ``.json`` file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"order file not found: {path}", kind="order", field="order", status=404)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(
            f"order file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}",
            kind="order",
        ) from None
    return parse_order(data, f"in {path.name}")
