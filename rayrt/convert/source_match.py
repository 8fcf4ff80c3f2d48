"""Source (beam) coincidence: two machines' commissioning curves compared by 1-D gamma.

A beam model is judged by what a physicist would measure: the curves of
:func:`rayrt.dose.curves.commissioning_curves` -- central-axis PDDs of several square fields
and crossline profiles at several depths (SSD 100 cm), in water and in the lung (0.25) and bone
(1.8) slab phantoms. Each curve of the target machine is compared with the same curve of the
source machine:

* **1-D gamma** (Low et al. 1998, :func:`rayrt.qa.gamma.gamma_index` on a one-row grid, so the
  search runs along the curve only): global dose criterion in % of the curve's 100 % (PDD: its
  maximum; profile: its central-axis dose), distance to agreement in mm, points below
  ``cutoff_pct`` of the reference excluded (the profile tails);
* **maximum deviation**: the largest |target - source| in percentage points over the points
  above the cutoff.

The source part's score is the pass rate over all compared points of all curves (one number,
0..100 %); its verdict is ``matches`` when that rate is >= ``match_pass_rate_pct`` at the
match criteria (default 1 %/1 mm, 99 %) *and* the maximum deviation is below
``match_max_deviation_pct``; ``similar`` when the rate is >= ``similar_pass_rate_pct`` at the
looser criteria (default 2 %/2 mm, 95 %); else ``different``. The **output ratio** (target /
source dose at dmax per MU of the reference 10 x 10 cm² field) is reported too: a plan reused on
a matching machine has its MU divided by it.

Curves are deterministic in the beam-relevant part of the machine model, so they are cached
per machine: in memory (per process) and on disk as JSON under ``$RAYRT_CACHE_DIR/curves``
(default ``~/.cache/rayrt/curves``), keyed by a SHA-256 of the model's beam, MLC, jaws and SAD
(not its name: two machines with the same data share one entry) and of the curve settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rayrt.convert.coincidence import max_field_mm
from rayrt.domain.machine import MachineModel
from rayrt.dose.curves import CommissioningCurves, commissioning_curves
from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.gamma import GammaCriteria, gamma_index

__all__ = [
    "CurveSettings",
    "SourceMatchConfig",
    "CurveComparison",
    "SourceComparison",
    "cached_curves",
    "compare_sources",
    "curves_cache_dir",
    "output_factor_gy_per_mu",
]

SourceVerdict = Literal["matches", "similar", "different"]


_DEFAULT_DEPTHS_MM: tuple[float | str, ...] = ("dmax", 50.0, 100.0, 200.0)


class CurveSettings(BaseModel):
    """Which commissioning curves are computed (arguments of :func:`rayrt.dose.curves.commissioning_curves`)."""

    model_config = ConfigDict(extra="forbid")

    fields_mm: list[float] = Field(
        default_factory=lambda: [30.0, 50.0, 100.0, 200.0], description="square field sides (mm at SSD 100 cm)"
    )
    depths_mm: list[float | str] = Field(
        default_factory=lambda: list(_DEFAULT_DEPTHS_MM), description="profile depths (mm or 'dmax')"
    )
    slab: bool = Field(default=True, description="also the lung and bone slab phantoms")
    resolution_mm: float = Field(default=2.0, gt=0, description="depth / position spacing of the curves (mm)")
    max_depth_mm: float = Field(default=300.0, gt=0)


class SourceMatchConfig(BaseModel):
    """Thresholds of the source comparison (section ``source`` of ``configs/conversion.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    curves: CurveSettings = Field(default_factory=CurveSettings)
    match_dose_pct: float = Field(
        default=1.0, gt=0, description="gamma dose criterion for 'matches' (% of the curve's 100 %)"
    )
    match_dta_mm: float = Field(default=1.0, gt=0, description="gamma distance criterion for 'matches' (mm)")
    match_pass_rate_pct: float = Field(default=99.0, ge=0, le=100)
    match_max_deviation_pct: float = Field(
        default=3.0, gt=0, description="largest point difference (percentage points) for 'matches'"
    )
    similar_dose_pct: float = Field(default=2.0, gt=0)
    similar_dta_mm: float = Field(default=2.0, gt=0)
    similar_pass_rate_pct: float = Field(default=95.0, ge=0, le=100)
    cutoff_pct: float = Field(
        default=10.0, ge=0, lt=100, description="curve points below this % of the reference are not compared"
    )


class CurveComparison(BaseModel):
    """One curve of the target compared with the source's."""

    phantom: str
    kind: Literal["pdd", "profile"]
    field_mm: float
    depth: str | None = Field(default=None, description="profile depth label ('dmax' or mm)")
    points: int = Field(description="compared points (at or above the cutoff)")
    pass_rate_pct: float = Field(description="1-D gamma pass rate at the match criteria")
    pass_rate_similar_pct: float = Field(description="1-D gamma pass rate at the 'similar' criteria")
    max_gamma: float
    max_deviation_pct: float = Field(
        description="largest |target - source| (percentage points) over the compared points"
    )


class SourceComparison(BaseModel):
    """The target machine's beam compared with the source's (see the module docstring)."""

    source: str
    target: str
    criteria: str = Field(description="e.g. '1%/1mm global, cutoff 10%'")
    score_pct: float = Field(description="pass rate over every compared point of every curve at the match criteria (%)")
    score_similar_pct: float = Field(description="the same at the 'similar' criteria (%)")
    min_curve_pass_rate_pct: float
    max_deviation_pct: float
    output_ratio: float = Field(description="target / source dose at dmax per MU of the reference 10 x 10 cm² field")
    tpr2010_source: float | None = None
    tpr2010_target: float | None = None
    verdict: SourceVerdict
    reasons: list[str] = Field(default_factory=list)
    curves: list[CurveComparison] = Field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- cache
_MEM_CACHE: dict[str, CommissioningCurves] = {}
_LOCK = threading.Lock()


def curves_cache_dir() -> Path:
    """``$RAYRT_CACHE_DIR/curves`` or ``~/.cache/rayrt/curves``."""
    base = os.environ.get("RAYRT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "rayrt") / "curves"


def _beam_key(machine: MachineModel, settings: CurveSettings) -> str:
    """SHA-256 of everything the curves depend on (not the machine's name or description)."""
    data = {
        "beam": machine.beam.model_dump(mode="json"),
        "mlc": machine.mlc.model_dump(mode="json", exclude={"name"}),
        "jaw_x": None if machine.jaw_x is None else machine.jaw_x.model_dump(mode="json"),
        "jaw_y": None if machine.jaw_y is None else machine.jaw_y.model_dump(mode="json"),
        "sad_mm": machine.sad_mm,
        "limits": {"max_field_x_mm": machine.limits.max_field_x_mm, "max_field_y_mm": machine.limits.max_field_y_mm},
        "settings": settings.model_dump(mode="json"),
        "engine": 1,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


def _fields_for(machine: MachineModel, settings: CurveSettings) -> list[float]:
    """The requested fields the machine can open (a Halcyon opens at most 28 x 28 cm²)."""
    fx, fy = max_field_mm(machine)
    return [f for f in settings.fields_mm if f <= min(fx, fy) + 1e-6]


def cached_curves(
    machine: MachineModel, settings: CurveSettings | None = None, *, use_disk: bool = True
) -> CommissioningCurves:
    """The machine's :class:`~rayrt.dose.curves.CommissioningCurves`, computed once per beam model.

    Fields the machine cannot open are left out. The curves carry the machine's own name even when
    they come from the entry of another machine with the same data.
    """
    st = settings or CurveSettings()
    fields = _fields_for(machine, st)
    st = st.model_copy(update={"fields_mm": fields})
    key = _beam_key(machine, st)
    with _LOCK:
        hit = _MEM_CACHE.get(key)
    if hit is None and use_disk:
        p = curves_cache_dir() / f"{key}.json"
        if p.is_file():
            try:
                hit = CommissioningCurves.model_validate_json(p.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                hit = None
    if hit is None:
        hit = commissioning_curves(
            machine,
            fields_mm=fields,
            depths_mm=st.depths_mm,
            slab=st.slab,
            resolution_mm=st.resolution_mm,
            max_depth_mm=st.max_depth_mm,
        )
        if use_disk:
            try:
                d = curves_cache_dir()
                d.mkdir(parents=True, exist_ok=True)
                tmp = d / f"{key}.{os.getpid()}.tmp"
                tmp.write_text(hit.model_dump_json(), encoding="utf-8")
                tmp.replace(d / f"{key}.json")
            except OSError:
                pass  # a read-only home: the memory cache still works
    with _LOCK:
        _MEM_CACHE[key] = hit
    return hit if hit.machine == machine.name else hit.model_copy(update={"machine": machine.name})


def output_factor_gy_per_mu(curves: CommissioningCurves, field_mm: float = 100.0) -> float:
    """Dose at dmax per MU (Gy) of the field closest to ``field_mm`` in water."""
    ref = min((p.field_mm for p in curves.water.pdds), key=lambda f: abs(f - field_mm))
    return float(curves.water.pdd(ref).dmax_gy_per_mu)


# --------------------------------------------------------------------------- comparison
def _gamma_1d_batch(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    spacing_mm: float,
    dose_pct: float,
    dta_mm: float,
    cutoff_pct: float,
    norm: float,
) -> list[np.ndarray]:
    """Gamma values (NaN below the cutoff) of each evaluated curve against its reference curve.

    All curves go through one :func:`rayrt.qa.gamma.gamma_index` call on a one-row grid: they are
    laid end to end, separated by zero-dose gaps wider than the search radius, so no point ever
    finds a candidate on another curve (a gap point could only lower gamma to below
    cutoff/dose criterion, itself >= the 3 x DTA search cap)."""
    max_gamma = 3.0
    gap = int(np.ceil(max_gamma * dta_mm / spacing_mm)) + 3
    ref_parts, ev_parts, spans = [], [], []
    pos = 0
    for a, b in pairs:
        ref_parts += [np.asarray(a, float), np.zeros(gap)]
        ev_parts += [np.asarray(b, float), np.zeros(gap)]
        spans.append((pos, pos + len(a)))
        pos += len(a) + gap
    ref = np.concatenate(ref_parts)
    ev = np.concatenate(ev_parts)
    n = ref.size
    grid = Grid(shape=(1, 1, n), spacing_mm=(spacing_mm, spacing_mm, spacing_mm), origin_mm=(0.0, 0.0, 0.0))
    crit = GammaCriteria(
        dose_pct=dose_pct,
        dta_mm=dta_mm,
        cutoff_pct=cutoff_pct,
        normalization_gy=norm,
        interp_fraction=10,
        max_gamma=max_gamma,
    )
    res = gamma_index(Volume(ref.reshape(1, 1, n), grid, "pct"), Volume(ev.reshape(1, 1, n), grid, "pct"), crit)
    g = res.gamma.ravel().astype(np.float64)
    return [g[a:b] for a, b in spans]


def compare_sources(
    source: MachineModel, target: MachineModel, config: SourceMatchConfig | None = None
) -> SourceComparison:
    """Compare the target machine's commissioning curves with the source's (see the module docstring)."""
    t0 = time.perf_counter()
    cfg = config or SourceMatchConfig()
    cs = cached_curves(source, cfg.curves)
    ct = cached_curves(target, cfg.curves)
    reasons: list[str] = []
    out: list[CurveComparison] = []
    tot_n = tot_p1 = tot_p2 = 0.0
    if cs.depths_mm != ct.depths_mm or cs.positions_mm != ct.positions_mm:
        reasons.append(
            "the two machines' curves lie on different grids (different settings); compared on the common part"
        )
    h = cs.resolution_mm
    nd = min(len(cs.depths_mm), len(ct.depths_mm))
    common_fields = [f for f in cs.fields_mm if f in ct.fields_mm]
    missing = [f for f in cs.fields_mm if f not in ct.fields_mm]
    if missing:
        sides = ", ".join(f"{f:g}" for f in missing)
        reasons.append(f"{target.name} cannot open the {sides} mm field(s) of the comparison")
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    meta: list[tuple[str, Literal["pdd", "profile"], float, str | None]] = []
    for ph_s in [cs.water, *cs.slabs]:
        try:
            ph_t = ct.phantom(ph_s.phantom)
        except KeyError:
            reasons.append(f"no {ph_s.phantom} curves for {target.name}")
            continue
        for f in common_fields:
            pairs.append((np.asarray(ph_s.pdd(f).dose_pct[:nd]), np.asarray(ph_t.pdd(f).dose_pct[:nd])))
            meta.append((ph_s.phantom, "pdd", f, None))
            for lab in cs.profile_depths:
                try:
                    pa, pb = ph_s.profile(f, lab), ph_t.profile(f, lab)
                except KeyError:
                    continue
                m = min(len(pa.dose_pct), len(pb.dose_pct))
                pairs.append((np.asarray(pa.dose_pct[:m]), np.asarray(pb.dose_pct[:m])))
                meta.append((ph_s.phantom, "profile", f, lab))
    if pairs:
        g1 = _gamma_1d_batch(pairs, h, cfg.match_dose_pct, cfg.match_dta_mm, cfg.cutoff_pct, 100.0)
        g2 = _gamma_1d_batch(pairs, h, cfg.similar_dose_pct, cfg.similar_dta_mm, cfg.cutoff_pct, 100.0)
        for (a, b), x1, x2, (ph, kind, f, depth) in zip(pairs, g1, g2, meta):
            ok = np.isfinite(x1)
            n = int(ok.sum())
            p1 = float((x1[ok] <= 1.0).sum())
            p2 = float((x2[np.isfinite(x2)] <= 1.0).sum())
            dev = float(np.abs(a[ok] - b[ok]).max()) if n else 0.0
            out.append(
                CurveComparison(
                    phantom=ph,
                    kind=kind,
                    field_mm=f,
                    depth=depth,
                    points=n,
                    pass_rate_pct=100.0 * p1 / max(n, 1),
                    pass_rate_similar_pct=100.0 * p2 / max(n, 1),
                    max_gamma=float(x1[ok].max()) if n else 0.0,
                    max_deviation_pct=dev,
                )
            )
            tot_n += n
            tot_p1 += p1
            tot_p2 += p2
    score = 100.0 * tot_p1 / tot_n if tot_n else 0.0
    score2 = 100.0 * tot_p2 / tot_n if tot_n else 0.0
    max_dev = max((c.max_deviation_pct for c in out), default=float("inf"))
    min_rate = min((c.pass_rate_pct for c in out), default=0.0)
    out_ratio = output_factor_gy_per_mu(ct) / output_factor_gy_per_mu(cs)
    if not out:
        verdict: SourceVerdict = "different"
        reasons.append("no curve could be compared")
    elif score >= cfg.match_pass_rate_pct and max_dev <= cfg.match_max_deviation_pct and not missing:
        verdict = "matches"
    elif score2 >= cfg.similar_pass_rate_pct:
        verdict = "similar"
    else:
        verdict = "different"
    if verdict != "matches" and out:
        worst = sorted(out, key=lambda c: c.pass_rate_pct)[:3]
        reasons.append(
            f"gamma {cfg.match_dose_pct:g}%/{cfg.match_dta_mm:g}mm pass rate {score:.2f} % "
            f"(needs >= {cfg.match_pass_rate_pct:g} %), max deviation {max_dev:.2f} % "
            f"(needs <= {cfg.match_max_deviation_pct:g} %)"
        )
        reasons.append(
            "worst curves: "
            + "; ".join(
                f"{c.phantom} {c.kind} {c.field_mm:g} mm{'' if c.depth is None else ' @ ' + c.depth} "
                f"{c.pass_rate_pct:.1f} %"
                for c in worst
            )
        )
    return SourceComparison(
        source=source.name,
        target=target.name,
        criteria=f"{cfg.match_dose_pct:g}%/{cfg.match_dta_mm:g}mm global, cutoff {cfg.cutoff_pct:g}%",
        score_pct=round(score, 4),
        score_similar_pct=round(score2, 4),
        min_curve_pass_rate_pct=round(min_rate, 4),
        max_deviation_pct=round(max_dev, 4),
        output_ratio=out_ratio,
        tpr2010_source=cs.tpr2010,
        tpr2010_target=ct.tpr2010,
        verdict=verdict,
        reasons=reasons,
        curves=out,
        seconds=time.perf_counter() - t0,
    )
