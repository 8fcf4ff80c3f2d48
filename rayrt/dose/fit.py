"""Commissioning fit: adjust a machine's beam-model parameters to measured PDDs and profiles.

Measured data (water tank, SSD 100 cm) come as two CSV files, relative dose in any scale:

**PDD file** — one row per measured point::

    depth_mm,dose[,field_mm]
    5,86.1,100
    15,100.0,100
    ...

* ``depth`` (mm) — accepted headers: ``depth``, ``depth_mm``, ``depth (mm)``, ``d``, ``z``,
  ``z_mm``; ``depth_cm`` / ``depth (cm)`` are converted from cm.
* ``dose`` — relative dose in any unit (%, reading, Gy...): ``dose``, ``dose_pct``, ``dose (%)``,
  ``relative_dose``, ``rel_dose``, ``pdd``, ``pdd_pct``, ``value``, ``reading``, ``signal``.
* ``field`` (mm, optional) — side of the square field at the surface/isocenter: ``field``,
  ``field_mm``, ``field_size``, ``field_size_mm``, ``fs``, ``field (mm)``; ``field_cm``,
  ``field_size_cm`` and ``field size (cm)`` are converted. Absent: every point is the 10 x 10 cm²
  field. Several fields may share one file (a curve per distinct field value).

**Profile file** — one row per point of a lateral (crossline, X) profile::

    field_mm,depth_mm,position_mm,dose
    100,100,-80,3.1
    ...

* ``position`` (mm, off-axis, 0 = central axis): ``position``, ``position_mm``, ``pos``,
  ``x``, ``x_mm``, ``off_axis``, ``off_axis_mm``, ``offaxis``, ``r``; ``position_cm``/``x_cm``
  converted; plus ``field`` and ``depth`` (both required) and ``dose`` as above.

Header matching ignores case, spaces, dashes and parentheses (``"Depth (mm)"`` ==
``depth_mm``). Delimiter: comma, semicolon, tab or whitespace (sniffed). Lines starting with
``#`` are comments. A file without a header is read as ``depth_mm,dose`` (PDD) or
``field_mm,depth_mm,position_mm,dose`` (profiles). A decimal comma is not supported (use ``.``).

Normalisation: each PDD is scaled to 100 % at its maximum, each profile to 100 % on the
central axis (interpolated at position 0). Residuals are in % of that normalisation (global).

Bad files raise :class:`~rayrt.domain.errors.InputError` (missing file, no numeric rows, missing
columns, non-finite or negative doses, too few points, a profile that does not cross the axis,
depths beyond 400 mm...).

The fit (:func:`fit_machine`) starts from a base machine, varies a few physically meaningful
beam-model parameters (see :data:`FIT_PARAMETERS`) with bounded least squares
(``scipy.optimize.least_squares``, trust-region reflective) on the residuals of the model curves
computed by the real engine (:func:`rayrt.dose.curves.commissioning_curves` at the chosen
resolution), and reports RMS and max residuals before and after.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.domain.errors import InputError

# --------------------------------------------------------------------------- CSV reading
_ALIASES: dict[str, dict[str, float]] = {
    # canonical column -> {normalised header: factor to mm (or 1 for dose)}
    "depth": {"depth": 1, "depthmm": 1, "d": 1, "dmm": 1, "z": 1, "zmm": 1, "depthcm": 10, "dcm": 10, "zcm": 10},
    "dose": {
        "dose": 1, "dosepct": 1, "dosepercent": 1, "dose%": 1, "relativedose": 1, "reldose": 1, "pdd": 1,
        "pddpct": 1, "pdd%": 1, "value": 1, "reading": 1, "signal": 1, "relativedosepct": 1, "relativedose%": 1,
        "dosegy": 1, "dosecgy": 1, "percentdepthdose": 1, "oar": 1, "profile": 1,
    },
    "field": {
        "field": 1, "fieldmm": 1, "fieldsize": 1, "fieldsizemm": 1, "fs": 1, "fsmm": 1, "field_mm": 1,
        "fieldcm": 10, "fieldsizecm": 10, "fscm": 10,
    },
    "position": {
        "position": 1, "positionmm": 1, "pos": 1, "posmm": 1, "x": 1, "xmm": 1, "offaxis": 1, "offaxismm": 1,
        "offaxisdistance": 1, "offaxisdistancemm": 1, "r": 1, "rmm": 1, "positioncm": 10, "poscm": 10, "xcm": 10,
        "offaxiscm": 10, "offaxisdistancecm": 10, "rcm": 10,
    },
}

MAX_DEPTH_MM = 400.0
MAX_OFF_AXIS_MM = 300.0


def _norm_header(h: str) -> str:
    h = h.strip().lower().replace("%", "%").replace("µ", "u")
    h = re.sub(r"[\s_\-\(\)\[\]/\.]+", "", h)
    return h


def _match_columns(header: list[str], wanted: list[str], path: Path) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    norm = [_norm_header(h) for h in header]
    for col in wanted:
        for idx, h in enumerate(norm):
            if h in _ALIASES[col]:
                out[col] = (idx, float(_ALIASES[col][h]))
                break
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_rows(path: str | Path) -> tuple[Path, list[str] | None, list[list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"measurement file {path} does not exist; give the path of a CSV file", kind="fit", field=str(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not a text (UTF-8) CSV file", kind="fit", field=path.name) from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path.name} is empty; it needs a header and rows of numbers", kind="fit", field=path.name)
    sample = "\n".join(lines[:20])
    if "," in sample:
        delim = ","
    elif ";" in sample:
        delim = ";"
    elif "\t" in sample:
        delim = "\t"
    else:
        delim = None
    if delim is None:
        rows = [ln.split() for ln in lines]
    else:
        rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=delim)]
    rows = [r for r in rows if any(c for c in r)]
    header = None
    if rows and not all(_is_number(c) for c in rows[0] if c != ""):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise InputError(f"{path.name} has a header but no data rows", kind="fit", field=path.name)
    return path, header, rows


def _columns(path: Path, header: list[str] | None, rows: list[list[str]], wanted: list[str], optional: list[str],
             default_order: list[str]) -> dict[str, np.ndarray]:
    if header is None:
        ncol = len(rows[0])
        if ncol < len(default_order):
            raise InputError(
                f"{path.name} has no header and {ncol} columns; expected {len(default_order)} columns "
                f"({', '.join(default_order)}) or a header naming them",
                kind="fit", field=path.name,
            )
        cols = {c: (i, 1.0) for i, c in enumerate(default_order)}
    else:
        cols = _match_columns(header, wanted + optional, path)
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise InputError(
                f"{path.name}: no column for {', '.join(missing)} among the headers {header}; "
                f"name them e.g. {', '.join(c + ('_mm' if c != 'dose' else '') for c in wanted)}",
                kind="fit", field=path.name,
            )
    out: dict[str, np.ndarray] = {}
    for c, (idx, factor) in cols.items():
        vals = []
        for ln, r in enumerate(rows, start=2 if header else 1):
            if idx >= len(r) or r[idx] == "":
                raise InputError(f"{path.name} row {ln}: the '{c}' value is missing", kind="fit", field=path.name)
            try:
                vals.append(float(r[idx]) * factor)
            except ValueError:
                raise InputError(
                    f"{path.name} row {ln}: '{r[idx]}' in column '{c}' is not a number (use '.' as the decimal point)",
                    kind="fit", field=path.name,
                ) from None
        a = np.asarray(vals, dtype=float)
        if not np.all(np.isfinite(a)):
            raise InputError(f"{path.name}: column '{c}' has non-finite values (nan/inf)", kind="fit", field=path.name)
        out[c] = a
    if np.any(out["dose"] < 0):
        raise InputError(f"{path.name}: negative dose values; give relative dose >= 0", kind="fit", field=path.name)
    if "depth" in out and (np.any(out["depth"] < 0) or np.any(out["depth"] > MAX_DEPTH_MM)):
        raise InputError(
            f"{path.name}: depths must lie in 0..{MAX_DEPTH_MM:.0f} mm (are they in cm? name the column depth_cm)",
            kind="fit", field=path.name,
        )
    if "field" in out and (np.any(out["field"] < 5) or np.any(out["field"] > 400)):
        raise InputError(
            f"{path.name}: field sizes must be 5..400 mm (square side at SSD; in cm? name the column field_cm)",
            kind="fit", field=path.name,
        )
    if "position" in out and np.any(np.abs(out["position"]) > MAX_OFF_AXIS_MM):
        raise InputError(f"{path.name}: off-axis positions beyond ±{MAX_OFF_AXIS_MM:.0f} mm", kind="fit", field=path.name)
    return out


class MeasuredPDD(BaseModel):
    """A measured depth-dose curve of one square field, normalised to 100 % at its maximum."""

    model_config = ConfigDict(extra="forbid")
    field_mm: float
    depths_mm: list[float]
    dose_pct: list[float]


class MeasuredProfile(BaseModel):
    """A measured lateral profile of one square field at one depth, 100 % on the central axis."""

    model_config = ConfigDict(extra="forbid")
    field_mm: float
    depth_mm: float
    positions_mm: list[float]
    dose_pct: list[float]


class MeasuredData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pdds: list[MeasuredPDD] = Field(default_factory=list)
    profiles: list[MeasuredProfile] = Field(default_factory=list)

    @property
    def fields_mm(self) -> list[float]:
        return sorted({p.field_mm for p in self.pdds} | {p.field_mm for p in self.profiles})

    @property
    def profile_depths_mm(self) -> list[float]:
        return sorted({p.depth_mm for p in self.profiles})

    @property
    def max_depth_mm(self) -> float:
        return max([max(p.depths_mm) for p in self.pdds] + [p.depth_mm for p in self.profiles] + [0.0])

    @property
    def max_off_axis_mm(self) -> float:
        return max([max(abs(min(p.positions_mm)), abs(max(p.positions_mm))) for p in self.profiles] + [0.0])


def read_pdd_csv(path: str | Path) -> list[MeasuredPDD]:
    """Read a PDD CSV (see the module doc); one curve per field, sorted by depth, 100 % at max."""
    p, header, rows = _read_rows(path)
    c = _columns(p, header, rows, ["depth", "dose"], ["field"], ["depth", "dose"])
    field = c.get("field", np.full(c["depth"].shape, 100.0))
    out = []
    for f in np.unique(field):
        sel = field == f
        d, v = c["depth"][sel], c["dose"][sel]
        order = np.argsort(d)
        d, v = d[order], v[order]
        if d.size < 5:
            raise InputError(f"{p.name}: the {f:g} mm field has {d.size} points; a PDD needs at least 5", kind="fit", field=p.name)
        if np.any(np.diff(d) <= 0):
            raise InputError(f"{p.name}: the {f:g} mm field repeats a depth; give each depth once", kind="fit", field=p.name)
        if v.max() <= 0:
            raise InputError(f"{p.name}: the {f:g} mm field has no positive dose", kind="fit", field=p.name)
        out.append(MeasuredPDD(field_mm=float(f), depths_mm=d.tolist(), dose_pct=(100.0 * v / v.max()).tolist()))
    return out


def read_profiles_csv(path: str | Path) -> list[MeasuredProfile]:
    """Read a profile CSV (see the module doc); one profile per (field, depth), 100 % on the axis."""
    p, header, rows = _read_rows(path)
    c = _columns(p, header, rows, ["field", "depth", "position", "dose"], [], ["field", "depth", "position", "dose"])
    out = []
    keys = np.unique(np.stack([c["field"], c["depth"]], axis=1), axis=0)
    for f, dep in keys:
        sel = (c["field"] == f) & (c["depth"] == dep)
        x, v = c["position"][sel], c["dose"][sel]
        order = np.argsort(x)
        x, v = x[order], v[order]
        label = f"the {f:g} mm field at {dep:g} mm"
        if x.size < 5:
            raise InputError(f"{p.name}: {label} has {x.size} points; a profile needs at least 5", kind="fit", field=p.name)
        if np.any(np.diff(x) <= 0):
            raise InputError(f"{p.name}: {label} repeats a position; give each position once", kind="fit", field=p.name)
        if not (x[0] <= 0.0 <= x[-1]):
            raise InputError(f"{p.name}: {label} does not cross the central axis (position 0)", kind="fit", field=p.name)
        cax = float(np.interp(0.0, x, v))
        if cax <= 0:
            raise InputError(f"{p.name}: {label} has no dose on the central axis", kind="fit", field=p.name)
        out.append(MeasuredProfile(field_mm=float(f), depth_mm=float(dep), positions_mm=x.tolist(), dose_pct=(100.0 * v / cax).tolist()))
    return out


def read_measurements(pdd_csv: str | Path | None, profiles_csv: str | Path | None) -> MeasuredData:
    if pdd_csv is None and profiles_csv is None:
        raise InputError("give at least one measurement file (--pdd and/or --profiles)", kind="fit")
    return MeasuredData(
        pdds=read_pdd_csv(pdd_csv) if pdd_csv is not None else [],
        profiles=read_profiles_csv(profiles_csv) if profiles_csv is not None else [],
    )


def write_pdd_csv(path: str | Path, pdds: list[MeasuredPDD]) -> Path:
    """Write PDDs in the documented format (``field_mm,depth_mm,dose_pct``)."""
    path = Path(path)
    lines = ["field_mm,depth_mm,dose_pct"]
    for p in pdds:
        lines += [f"{p.field_mm:g},{d:.3f},{v:.4f}" for d, v in zip(p.depths_mm, p.dose_pct)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_profiles_csv(path: str | Path, profiles: list[MeasuredProfile]) -> Path:
    """Write profiles in the documented format (``field_mm,depth_mm,position_mm,dose_pct``)."""
    path = Path(path)
    lines = ["field_mm,depth_mm,position_mm,dose_pct"]
    for p in profiles:
        lines += [f"{p.field_mm:g},{p.depth_mm:g},{x:.3f},{v:.4f}" for x, v in zip(p.positions_mm, p.dose_pct)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
