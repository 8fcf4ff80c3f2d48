"""QA of a (converted) plan: run the checks, decide a verdict, write JSON and a one-page PNG/PDF.

:func:`qa_plan` runs, in this order,

1. the independent dose check: the plan's dose recomputed on a finer grid by an independent
   engine (``recompute`` callable; default :func:`rayrt.dose.aperture.aperture_dose` on the
   given ``density``) compared with the planned dose (:func:`rayrt.qa.checks.independent_dose_check`);
2. gamma of the plan's dose against the standard plan's dose (TG-218: 3 %/2 mm global, 10 %
   cutoff, tolerance >= 95 %, action <= 90 %);
3. the DVH criteria of the medical order (:func:`rayrt.qa.checks.dvh_criteria_checks`);
4. deliverability on the machine (:func:`rayrt.qa.deliverability.check_plan`).

Verdict: ``fail`` when any check fails, ``review`` when any warns, else ``pass``.
:func:`write_qa_report` writes ``<stem>.json`` (the :class:`QAReport`) and ``<stem>.png`` /
``<stem>.pdf``: the DVH overlay standard vs plan, the dose difference (plan - standard) and the
gamma map on the three central planes through the target, and the checks table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, Field

from rayrt.domain.machine import MachineModel
from rayrt.domain.order import MedicalOrder
from rayrt.domain.plan import Plan
from rayrt.imaging.volume import Volume
from rayrt.qa.checks import (
    TG218_ACTION_PCT,
    TG218_CRITERIA,
    TG218_TOLERANCE_PCT,
    DoseRecompute,
    QACheck,
    default_recompute,
    deliverability_check,
    dvh_criteria_checks,
    gamma_check,
    independent_dose_check,
    masks_on_grid,
)
from rayrt.qa.dvh import DVHMetrics, cumulative_dvh, dvh_metrics
from rayrt.qa.gamma import GammaCriteria, GammaResult, GammaSummary

Verdict = Literal["pass", "review", "fail"]


class QAReport(BaseModel):
    """The QA outcome of one plan."""

    plan_id: str
    machine: str
    standard_plan_id: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    checks: list[QACheck] = Field(default_factory=list)
    verdict: Verdict = "pass"
    attempts: int = Field(default=1, ge=1, description="how many conversion attempts led to this plan")
    gamma: GammaSummary | None = Field(default=None, description="gamma of the plan dose against the standard dose")
    dvh_standard: list[DVHMetrics] = Field(default_factory=list)
    dvh_plan: list[DVHMetrics] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @staticmethod
    def verdict_of(checks: list[QACheck]) -> Verdict:
        if any(c.status == "fail" for c in checks):
            return "fail"
        if any(c.status == "warn" for c in checks):
            return "review"
        return "pass"

    def failed(self) -> list[QACheck]:
        return [c for c in self.checks if c.status != "pass"]


@dataclass
class QAResult:
    """The report plus the arrays its figure shows (not part of the JSON)."""

    report: QAReport
    dose: Volume
    standard_dose: Volume | None = None
    gamma: GammaResult | None = None
    independent_dose: Volume | None = None
    masks: dict[str, np.ndarray] | None = None


def qa_plan(
    plan: Plan,
    machine: MachineModel,
    dose: Volume,
    *,
    standard_dose: Volume | None = None,
    masks: Mapping[str, "np.ndarray | Volume"] | None = None,
    order: MedicalOrder | None = None,
    density: Volume | None = None,
    recompute: DoseRecompute | Literal["auto"] | None = "auto",
    gamma_criteria: GammaCriteria = TG218_CRITERIA,
    tolerance_pct: float = TG218_TOLERANCE_PCT,
    action_pct: float = TG218_ACTION_PCT,
    attempts: int = 1,
    standard_plan_id: str | None = None,
    check_deliverability: bool = True,
) -> QAResult:
    """Run the QA checks of ``plan`` (dose in Gy on its grid) and decide the verdict.

    ``standard_dose``: the standard plan's dose (gamma reference); ``masks``: structure masks on
    the dose grid (arrays) or as Volumes on any grid (resampled, nearest); ``order``: the DVH
    criteria; ``density``: relative electron density (any grid) for the independent dose;
    ``recompute``: the independent dose engine ``(plan, machine, grid) -> Volume``, ``"auto"``
    for :func:`rayrt.dose.aperture.aperture_dose` on ``density`` (total course: x fractions)
    when a density is given, None to skip.
    """
    checks: list[QACheck] = []
    notes: list[str] = []
    mk = masks_on_grid(masks, dose.grid) if masks else {}

    # 1. independent dose
    engine = default_recompute(density) if recompute == "auto" else recompute
    indep = None
    if engine is not None:
        target = order.prescription.target if order else plan.target
        c, indep = independent_dose_check(plan, machine, dose, engine, target_mask=mk.get(target) if target else None)
        checks.extend(c)
    elif recompute == "auto":
        notes.append("independent dose check not run: no density given for rayrt.dose.aperture.aperture_dose")
    else:
        notes.append("independent dose check skipped by the caller")

    # 2. gamma against the standard plan
    gres = None
    if standard_dose is not None:
        gcheck, gres = gamma_check(
            standard_dose,
            dose,
            gamma_criteria,
            tolerance_pct,
            action_pct,
            name=f"gamma vs standard {gamma_criteria.label()}",
        )
        checks.append(gcheck)
    else:
        notes.append("no standard dose given: gamma against the standard plan not run")

    # 3. DVH criteria
    if order is not None:
        checks.extend(dvh_criteria_checks(dose, mk, order, reference=standard_dose))

    # 4. deliverability
    if check_deliverability:
        checks.append(deliverability_check(plan, machine))

    dvh_plan = [dvh_metrics(dose.array, m, dose.grid.voxel_volume_cc, n) for n, m in mk.items() if m.any()]
    dvh_std: list[DVHMetrics] = []
    if standard_dose is not None and masks:
        smk = masks_on_grid(masks, standard_dose.grid) if not standard_dose.grid.same_geometry(dose.grid) else mk
        dvh_std = [
            dvh_metrics(standard_dose.array, m, standard_dose.grid.voxel_volume_cc, n)
            for n, m in smk.items()
            if m.any()
        ]

    report = QAReport(
        plan_id=plan.id,
        machine=machine.name,
        standard_plan_id=standard_plan_id or plan.source_plan_id,
        checks=checks,
        verdict=QAReport.verdict_of(checks),
        attempts=attempts,
        gamma=gres.summary if gres is not None else None,
        dvh_standard=dvh_std,
        dvh_plan=dvh_plan,
        notes=notes,
    )
    return QAResult(
        report=report, dose=dose, standard_dose=standard_dose, gamma=gres, independent_dose=indep, masks=mk or None
    )


# --------------------------------------------------------------------------- figure
def _centre_index(result: QAResult) -> tuple[int, int, int]:
    """(k, j, i) of the planes shown: the centroid of the target-like mask, else of the high dose."""
    d = np.asarray(result.dose.array, dtype=np.float64)
    region = None
    if result.masks:
        names = sorted(
            result.masks, key=lambda n: (not n.upper().startswith(("PTV", "CTV", "GTV", "TARGET", "OUTERTARGET")), n)
        )
        for n in names:
            if result.masks[n].any():
                region = result.masks[n]
                break
    if region is None or not region.any():
        region = d >= 0.5 * d.max() if d.max() > 0 else np.ones(d.shape, bool)
    idx = np.argwhere(region).mean(axis=0)
    return tuple(int(round(v)) for v in idx)  # type: ignore[return-value]


def _planes(
    arr: np.ndarray, c: tuple[int, int, int], spacing: np.ndarray | None = None
) -> list[tuple[str, np.ndarray, float]]:
    """(label, 2-D plane, display aspect = row spacing / column spacing) of the three central planes."""
    k, j, i = (int(np.clip(v, 0, n - 1)) for v, n in zip(c, arr.shape))
    sx, sy, sz = (1.0, 1.0, 1.0) if spacing is None else (float(v) for v in spacing)
    return [
        ("axial", arr[k], sy / sx),
        ("coronal", arr[:, j, :][::-1], sz / sx),
        ("sagittal", arr[:, :, i][::-1], sz / sy),
    ]


def render_qa_figure(result: QAResult, path: str | Path) -> Path:
    """One page (A4 portrait): DVH overlay, dose difference and gamma on central planes, checks table."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in workers and threads

    rep = result.report
    fig = Figure(figsize=(8.27, 11.69), dpi=110)
    gs = fig.add_gridspec(4, 3, height_ratios=[1.25, 1.0, 1.0, 1.35], hspace=0.45, wspace=0.3)
    colour = {"pass": "#1a7f37", "review": "#b58100", "fail": "#c62828"}[rep.verdict]
    fig.suptitle(
        f"rayrt QA - plan {rep.plan_id} on {rep.machine}: {rep.verdict.upper()}",
        color=colour,
        fontsize=13,
        weight="bold",
    )

    # DVH overlay
    ax = fig.add_subplot(gs[0, :])
    dose = result.dose
    std = result.standard_dose
    std_on = None
    if std is not None:
        # outside the standard grid the standard dose is unknown (NaN): not drawn, not in its DVH
        std_on = std if std.grid.same_geometry(dose.grid) else std.resample(dose.grid, fill=np.nan)
    if result.masks:
        dmax = float(max(np.max(dose.array), np.nanmax(std_on.array) if std_on is not None else 0.0))
        bins = np.linspace(0.0, max(dmax, 1e-6) * 1.02, 400)
        cmap = matplotlib.colormaps["tab10"]
        for n_idx, (name, m) in enumerate(result.masks.items()):
            if not m.any():
                continue
            col = cmap(n_idx % 10)
            x, y = cumulative_dvh(dose.array, m, bins)
            ax.plot(x, y, color=col, lw=1.4, label=f"{name}")
            if std_on is not None:
                known = m & np.isfinite(std_on.array)
                if not known.any():
                    continue
                xs, ys = cumulative_dvh(np.nan_to_num(std_on.array), known, bins)
                ax.plot(xs, ys, color=col, lw=1.1, ls="--")
        ax.legend(fontsize=7, ncol=4, loc="upper right", title="solid: plan, dashed: standard", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no structures given", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.set_title("cumulative DVH", fontsize=9)

    c = _centre_index(result)
    # dose difference (plan - standard), or the plan dose
    if std_on is not None:
        diff = np.asarray(dose.array, dtype=np.float64) - np.asarray(std_on.array, dtype=np.float64)
        lim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
        lim = lim or 1.0
        diff = np.ma.masked_invalid(diff)
        for col_i, (lab, sl, asp) in enumerate(_planes(diff, c, dose.grid.spacing)):
            a = fig.add_subplot(gs[1, col_i])
            im = a.imshow(sl, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest", aspect=asp)
            a.set_title(f"dose plan - standard, {lab}", fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
        fig.colorbar(im, ax=fig.axes[-3:], shrink=0.8, label="Gy")
    else:
        for col_i, (lab, sl, asp) in enumerate(_planes(np.asarray(dose.array, dtype=np.float64), c, dose.grid.spacing)):
            a = fig.add_subplot(gs[1, col_i])
            im = a.imshow(sl, cmap="jet", interpolation="nearest", aspect=asp)
            a.set_title(f"plan dose, {lab}", fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
        fig.colorbar(im, ax=fig.axes[-3:], shrink=0.8, label="Gy")

    # gamma map on the reference (standard) grid
    if result.gamma is not None:
        g = result.gamma.gamma
        gc = c
        if not result.gamma.grid.same_geometry(dose.grid):
            gi = np.clip(
                result.gamma.grid.world_to_index(dose.grid.index_to_world(np.array(c, float))),
                0,
                np.array(result.gamma.grid.shape) - 1,
            )
            gc = (int(round(gi[0])), int(round(gi[1])), int(round(gi[2])))
        for col_i, (lab, sl, asp) in enumerate(_planes(g, gc, result.gamma.grid.spacing)):
            a = fig.add_subplot(gs[2, col_i])
            im = a.imshow(
                np.ma.masked_invalid(sl), cmap="RdYlGn_r", vmin=0, vmax=2, interpolation="nearest", aspect=asp
            )
            a.set_title(
                f"gamma {result.gamma.summary.criteria.dose_pct:g}%/{result.gamma.summary.criteria.dta_mm:g}mm, {lab}",
                fontsize=8,
            )
            a.set_xticks([])
            a.set_yticks([])
        fig.colorbar(im, ax=fig.axes[-3:], shrink=0.8, label="gamma")
    else:
        a = fig.add_subplot(gs[2, :])
        a.axis("off")
        a.text(0.5, 0.5, "gamma against the standard plan not run (no standard dose)", ha="center", va="center")

    # checks table
    a = fig.add_subplot(gs[3, :])
    a.axis("off")
    rows = []
    cell_colours = []
    for chk in rep.checks[:22]:
        val = "-" if chk.value is None else f"{chk.value:.4g}"
        lim_s = "-" if chk.limit is None else f"{chk.limit:.4g}"
        rows.append([chk.name[:48], chk.status, f"{val} {chk.unit}".strip(), f"{lim_s} {chk.unit}".strip()])
        cc = {"pass": "#d8f0dc", "warn": "#fff1c2", "fail": "#f8d0d0"}[chk.status]
        cell_colours.append(["white", cc, "white", "white"])
    if rows:
        t = a.table(
            cellText=rows,
            colLabels=["check", "status", "value", "limit"],
            cellColours=cell_colours,
            loc="upper center",
            colWidths=[0.55, 0.1, 0.17, 0.17],
        )
        t.auto_set_font_size(False)
        t.set_fontsize(7)
        t.scale(1, 1.15)
    foot = [f"attempts: {rep.attempts}"] + rep.notes
    if len(rep.checks) > 22:
        foot.append(f"{len(rep.checks) - 22} more checks in the JSON report")
    # under the title, where a long checks table cannot run over it
    fig.text(0.5, 0.955, "\n".join(foot), fontsize=7, ha="center", va="top")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_qa_report(
    result: QAResult, out_dir: str | Path, stem: str = "qa", formats: tuple[str, ...] = ("png", "pdf")
) -> dict[str, Path]:
    """Write ``<stem>.json`` and the figure in each of ``formats``; returns the paths by format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json"}
    paths["json"].write_text(result.report.model_dump_json(indent=2), encoding="utf-8")
    for fmt in formats:
        paths[fmt] = render_qa_figure(result, out_dir / f"{stem}.{fmt}")
    return paths


def load_qa_report(path: str | Path) -> QAReport:
    return QAReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
