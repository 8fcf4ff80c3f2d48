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
        "dose": 1,
        "dosepct": 1,
        "dosepercent": 1,
        "dose%": 1,
        "relativedose": 1,
        "reldose": 1,
        "pdd": 1,
        "pddpct": 1,
        "pdd%": 1,
        "value": 1,
        "reading": 1,
        "signal": 1,
        "relativedosepct": 1,
        "relativedose%": 1,
        "dosegy": 1,
        "dosecgy": 1,
        "percentdepthdose": 1,
        "oar": 1,
        "profile": 1,
    },
    "field": {
        "field": 1,
        "fieldmm": 1,
        "fieldsize": 1,
        "fieldsizemm": 1,
        "fs": 1,
        "fsmm": 1,
        "field_mm": 1,
        "fieldcm": 10,
        "fieldsizecm": 10,
        "fscm": 10,
    },
    "position": {
        "position": 1,
        "positionmm": 1,
        "pos": 1,
        "posmm": 1,
        "x": 1,
        "xmm": 1,
        "offaxis": 1,
        "offaxismm": 1,
        "offaxisdistance": 1,
        "offaxisdistancemm": 1,
        "r": 1,
        "rmm": 1,
        "positioncm": 10,
        "poscm": 10,
        "xcm": 10,
        "offaxiscm": 10,
        "offaxisdistancecm": 10,
        "rcm": 10,
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
        raise InputError(
            f"measurement file {path} does not exist; give the path of a CSV file", kind="fit", field=str(path)
        )
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


def _columns(
    path: Path,
    header: list[str] | None,
    rows: list[list[str]],
    wanted: list[str],
    optional: list[str],
    default_order: list[str],
) -> dict[str, np.ndarray]:
    if header is None:
        ncol = len(rows[0])
        if ncol < len(default_order):
            raise InputError(
                f"{path.name} has no header and {ncol} columns; expected {len(default_order)} columns "
                f"({', '.join(default_order)}) or a header naming them",
                kind="fit",
                field=path.name,
            )
        cols = {c: (i, 1.0) for i, c in enumerate(default_order)}
    else:
        cols = _match_columns(header, wanted + optional, path)
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise InputError(
                f"{path.name}: no column for {', '.join(missing)} among the headers {header}; "
                f"name them e.g. {', '.join(c + ('_mm' if c != 'dose' else '') for c in wanted)}",
                kind="fit",
                field=path.name,
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
                    kind="fit",
                    field=path.name,
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
            kind="fit",
            field=path.name,
        )
    if "field" in out and (np.any(out["field"] < 5) or np.any(out["field"] > 400)):
        raise InputError(
            f"{path.name}: field sizes must be 5..400 mm (square side at SSD; in cm? name the column field_cm)",
            kind="fit",
            field=path.name,
        )
    if "position" in out and np.any(np.abs(out["position"]) > MAX_OFF_AXIS_MM):
        raise InputError(
            f"{path.name}: off-axis positions beyond ±{MAX_OFF_AXIS_MM:.0f} mm", kind="fit", field=path.name
        )
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
            raise InputError(
                f"{p.name}: the {f:g} mm field has {d.size} points; a PDD needs at least 5", kind="fit", field=p.name
            )
        if np.any(np.diff(d) <= 0):
            raise InputError(
                f"{p.name}: the {f:g} mm field repeats a depth; give each depth once", kind="fit", field=p.name
            )
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
            raise InputError(
                f"{p.name}: {label} has {x.size} points; a profile needs at least 5", kind="fit", field=p.name
            )
        if np.any(np.diff(x) <= 0):
            raise InputError(f"{p.name}: {label} repeats a position; give each position once", kind="fit", field=p.name)
        if not (x[0] <= 0.0 <= x[-1]):
            raise InputError(
                f"{p.name}: {label} does not cross the central axis (position 0)", kind="fit", field=p.name
            )
        cax = float(np.interp(0.0, x, v))
        if cax <= 0:
            raise InputError(f"{p.name}: {label} has no dose on the central axis", kind="fit", field=p.name)
        out.append(
            MeasuredProfile(
                field_mm=float(f), depth_mm=float(dep), positions_mm=x.tolist(), dose_pct=(100.0 * v / cax).tolist()
            )
        )
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


# --------------------------------------------------------------------------- the fit
class FitParameter(BaseModel):
    """One fitted beam-model parameter: value before and after, with its unit and bounds."""

    model_config = ConfigDict(extra="forbid")
    name: str
    unit: str
    before: float
    after: float
    lower: float
    upper: float


class Residuals(BaseModel):
    """Model minus measurement, in % of each curve's normalisation (PDD max, profile axis)."""

    model_config = ConfigDict(extra="forbid")
    pdd_rms_pct: float
    pdd_max_pct: float
    profile_rms_pct: float
    profile_max_pct: float
    num_pdd_points: int
    num_profile_points: int


class FitReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_machine: str
    fitted_machine: str
    parameters: list[FitParameter]
    before: Residuals
    after: Residuals
    evaluations: int
    seconds: float
    resolution_mm: float
    status: str = Field(description="scipy least_squares termination message")


class FitResult:
    """The fitted machine and the report."""

    __slots__ = ("machine", "report")

    def __init__(self, machine, report: FitReport):
        self.machine = machine
        self.report = report


def _spec(name: str, unit: str, rel_lo: float, rel_hi: float, get: Callable, apply: Callable) -> dict:
    return {"name": name, "unit": unit, "rel_lo": rel_lo, "rel_hi": rel_hi, "get": get, "apply": apply}


def _apply_attenuation(d: dict, base, x: float) -> None:
    d["attenuation_per_mm"] = base.attenuation_per_mm * x


def _apply_betas(d: dict, base, x: float) -> None:
    d["betas_per_mm"] = tuple(b * x for b in base.betas_per_mm)


def _apply_sigma(d: dict, base, x: float) -> None:
    d["source_sigma_mm"] = max(base.source_sigma_mm, 0.05) * x


def _apply_horn(d: dict, base, x: float) -> None:
    pf = np.asarray(base.primary_fluence, dtype=float)
    d["primary_fluence"] = [float(max(v, 1e-3)) for v in 1.0 + x * (pf - 1.0)]


def _apply_scatter(d: dict, base, x: float) -> None:
    d["kernels_per_mm2"] = tuple([float(v) * x for v in k] for k in base.kernels_per_mm2)


#: The fitted parameters, each a multiplicative factor x on the base machine's value (x = 1 at the start):
#:
#: * ``attenuation_per_mm`` — m, primary attenuation: the slope of the PDD beyond dmax;
#: * ``betas_per_mm`` — all three build-up constants scaled together: dmax and the build-up;
#: * ``source_sigma_mm`` — focal-spot Gaussian at the isocenter: the penumbra width;
#: * ``horn_scale`` — amplitude of the off-axis primary-fluence variation (1 + x (f(r) - 1)):
#:   the profile shoulders (horns of flattened beams, the cone of FFF beams);
#: * ``scatter_scale`` — kernel tails relative to the on-axis point weights: the phantom-scatter
#:   fraction, i.e. the field-size dependence of PDDs and the profile tails.
FIT_PARAMETERS: dict[str, dict] = {
    "attenuation_per_mm": _spec(
        "attenuation_per_mm", "1/mm", 0.6, 1.6, lambda b: b.attenuation_per_mm, _apply_attenuation
    ),
    "betas_per_mm": _spec(
        "beta_1 (betas scaled together)", "1/mm", 0.4, 2.5, lambda b: b.betas_per_mm[0], _apply_betas
    ),
    "source_sigma_mm": _spec("source_sigma_mm", "mm", 0.2, 5.0, lambda b: max(b.source_sigma_mm, 0.05), _apply_sigma),
    "horn_scale": _spec("horn_scale", "x base horn", 0.0, 4.0, lambda b: 1.0, _apply_horn),
    "scatter_scale": _spec("scatter_scale", "x base kernel tails", 0.5, 2.0, lambda b: 1.0, _apply_scatter),
}


def machine_with(base_machine, factors: dict[str, float], name: str | None = None):
    """A copy of ``base_machine`` with beam parameters scaled by ``factors`` (keys of FIT_PARAMETERS)."""
    from rayrt.domain.beam_model import BeamModel

    base = base_machine.beam
    d = base.model_dump()
    for key, x in factors.items():
        if key not in FIT_PARAMETERS:
            raise InputError(f"unknown fit parameter {key!r}; choose from {sorted(FIT_PARAMETERS)}", field="parameters")
        FIT_PARAMETERS[key]["apply"](d, base, float(x))
    beam = BeamModel.model_validate(d)
    return base_machine.model_copy(update={"beam": beam, "name": name or base_machine.name})


def _model_curves(machine, meas: MeasuredData, resolution_mm: float):
    from rayrt.dose.curves import SSD_MM, commissioning_curves

    fields = meas.fields_mm
    depths = meas.profile_depths_mm
    deepest = max(depths + [50.0])
    x_edge = max(fields) / 2 * (SSD_MM + deepest) / machine.sad_mm
    margin = max(20.0, meas.max_off_axis_mm - x_edge + 2 * resolution_mm)
    return commissioning_curves(
        machine,
        fields_mm=fields,
        depths_mm=depths or [100.0],
        slab=False,
        tpr=False,
        resolution_mm=resolution_mm,
        max_depth_mm=max(meas.max_depth_mm + 2 * resolution_mm, 60.0),
        lateral_margin_mm=margin,
    )


def residual_vectors(
    machine, meas: MeasuredData, resolution_mm: float, min_depth_mm: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(PDD residuals, profile residuals) of the machine's model curves vs the measurement, in %.

    Both sides are normalised the same way on the *measured* sample points: PDDs to their maximum
    over the measured depths, profiles to their value at position 0. PDD points shallower than
    ``min_depth_mm`` (build-up) are left out.
    """
    curves = _model_curves(machine, meas, resolution_mm)
    depths = np.asarray(curves.depths_mm)
    pos = np.asarray(curves.positions_mm)
    r_pdd, r_prof = [], []
    for p in meas.pdds:
        d = np.asarray(p.depths_mm)
        model = np.interp(d, depths, curves.water.pdd(p.field_mm).dose_pct)
        model = 100.0 * model / model.max()
        sel = d >= min_depth_mm
        r_pdd.append((model - np.asarray(p.dose_pct))[sel])
    for mp in meas.profiles:
        prof = curves.water.profile(mp.field_mm, mp.depth_mm)
        x = np.asarray(mp.positions_mm)
        model = np.interp(x, pos, prof.dose_pct)
        model = 100.0 * model / float(np.interp(0.0, pos, prof.dose_pct))
        r_prof.append(model - np.asarray(mp.dose_pct))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return cat(r_pdd), cat(r_prof)


def _stats(r_pdd: np.ndarray, r_prof: np.ndarray) -> Residuals:
    f = lambda r, fn: float(fn(r)) if r.size else 0.0  # noqa: E731
    return Residuals(
        pdd_rms_pct=f(r_pdd, lambda r: np.sqrt(np.mean(r**2))),
        pdd_max_pct=f(r_pdd, lambda r: np.abs(r).max()),
        profile_rms_pct=f(r_prof, lambda r: np.sqrt(np.mean(r**2))),
        profile_max_pct=f(r_prof, lambda r: np.abs(r).max()),
        num_pdd_points=int(r_pdd.size),
        num_profile_points=int(r_prof.size),
    )


def fit_machine(
    base_machine,
    meas: MeasuredData,
    *,
    parameters: list[str] | None = None,
    resolution_mm: float = 2.5,
    max_evaluations: int = 60,
    min_depth_mm: float = 0.0,
    name: str | None = None,
) -> FitResult:
    """Fit beam-model parameters of ``base_machine`` to measured PDDs/profiles (bounded least squares).

    ``parameters``: keys of :data:`FIT_PARAMETERS` (default: all that the data constrain —
    without profiles the profile-only parameters ``source_sigma_mm`` and ``horn_scale`` stay
    fixed). Each is a factor on the base value, bounded to its physical range. The residual
    vector is model - measurement in % (see :func:`residual_vectors`), PDD and profile points
    weighted equally. ``max_evaluations`` bounds the number of model evaluations (each computes
    the measured fields with the voxel engine at ``resolution_mm``).
    """
    import time

    from scipy.optimize import least_squares

    if not meas.pdds and not meas.profiles:
        raise InputError("no measured curves to fit", kind="fit")
    t0 = time.perf_counter()
    if parameters is None:
        parameters = ["attenuation_per_mm", "betas_per_mm", "scatter_scale"]
        if meas.profiles:
            parameters += ["source_sigma_mm", "horn_scale"]
    for p in parameters:
        if p not in FIT_PARAMETERS:
            raise InputError(f"unknown fit parameter {p!r}; choose from {sorted(FIT_PARAMETERS)}", field="parameters")
    lo = np.array([FIT_PARAMETERS[p]["rel_lo"] for p in parameters])
    hi = np.array([FIT_PARAMETERS[p]["rel_hi"] for p in parameters])
    # keep betas away from m (the model is singular at beta = m)
    n_eval = 0

    def resid(x: np.ndarray) -> np.ndarray:
        nonlocal n_eval
        n_eval += 1
        try:
            m = machine_with(base_machine, dict(zip(parameters, x)))
        except (ValueError, InputError):
            return np.full(n_res, 1e3)
        a, b = residual_vectors(m, meas, resolution_mm, min_depth_mm)
        return np.concatenate([a, b])

    r0_pdd, r0_prof = residual_vectors(base_machine, meas, resolution_mm, min_depth_mm)
    n_res = r0_pdd.size + r0_prof.size
    x0 = np.ones(len(parameters))
    res = least_squares(
        resid,
        x0,
        bounds=(lo, hi),
        method="trf",
        diff_step=1e-2,
        x_scale=1.0,
        max_nfev=max(int(max_evaluations) // (len(parameters) + 1), 2),
        xtol=1e-4,
        ftol=1e-6,
    )
    x = res.x
    fitted = machine_with(base_machine, dict(zip(parameters, x)), name=name or f"{base_machine.name}-fit")
    r1_pdd, r1_prof = residual_vectors(fitted, meas, resolution_mm, min_depth_mm)
    n_eval += 1
    params = []
    for p, xi, l_, h_ in zip(parameters, x, lo, hi):
        spec = FIT_PARAMETERS[p]
        v0 = float(spec["get"](base_machine.beam))
        after = float(spec["get"](fitted.beam)) if p not in ("horn_scale", "scatter_scale") else float(xi)
        params.append(
            FitParameter(name=spec["name"], unit=spec["unit"], before=v0, after=after, lower=v0 * l_, upper=v0 * h_)
        )
    report = FitReport(
        base_machine=base_machine.name,
        fitted_machine=fitted.name,
        parameters=params,
        before=_stats(r0_pdd, r0_prof),
        after=_stats(r1_pdd, r1_prof),
        evaluations=n_eval + 1,
        seconds=time.perf_counter() - t0,
        resolution_mm=resolution_mm,
        status=str(res.message),
    )
    return FitResult(fitted, report)


def write_machine_yaml(machine, path: str | Path) -> Path:
    """Write a MachineModel as a configs/machines-style YAML file (validated on reload)."""
    import yaml

    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"--out must name a .yaml file, got {path.name}", field="out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(machine.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path


def curves_as_measurements(
    curves, *, pdd_step_mm: float | None = None, profile_step_mm: float | None = None
) -> MeasuredData:
    """Turn computed CommissioningCurves (water) into MeasuredData (e.g. to write test CSVs).

    Optionally subsample PDD depths / profile positions to the given steps (mm).
    """
    depths = np.asarray(curves.depths_mm)
    pos = np.asarray(curves.positions_mm)
    dsel = (
        np.ones(depths.size, bool) if not pdd_step_mm else np.isclose(np.mod(depths + 1e-9, pdd_step_mm), 0, atol=1e-6)
    )
    dsel &= depths > 0
    psel = (
        np.ones(pos.size, bool)
        if not profile_step_mm
        else np.isclose(np.mod(pos + 1e-9, profile_step_mm), 0, atol=1e-6)
    )
    pdds = [
        MeasuredPDD(
            field_mm=p.field_mm,
            depths_mm=depths[dsel].tolist(),
            dose_pct=(100 * np.asarray(p.dose_pct)[dsel] / np.asarray(p.dose_pct)[dsel].max()).tolist(),
        )
        for p in curves.water.pdds
    ]
    profs = [
        MeasuredProfile(
            field_mm=p.field_mm,
            depth_mm=p.depth_mm,
            positions_mm=pos[psel].tolist(),
            dose_pct=np.asarray(p.dose_pct)[psel].tolist(),
        )
        for p in curves.water.profiles
    ]
    return MeasuredData(pdds=pdds, profiles=profs)
