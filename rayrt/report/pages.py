"""The report's text pages: cover (patient, job, prescription, release decisions and reviews),
plan summary, goals per plan, and QA per machine. Doses in Gy (total course), MU per fraction."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from rayrt.domain.review import PlanReview
from rayrt.pipeline.export import GoalResult
from rayrt.qa.checks import QACheck
from rayrt.report.content import PlanData, ReportInput
from rayrt.report.layout import STATUS_COLOURS, Column, Flow

__all__ = ["RECORD_NOTE", "cover", "plan_summary", "goals", "qa_pages", "fmt_time", "num"]

RECORD_NOTE = (
    "This report is a review aid. The record of the treatment plan is the set of DICOM RT objects "
    "(RTPLAN, RTDOSE, RTSTRUCT) the job exported, not this document."
)


def num(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A number with ``digits`` decimals and a unit, '-' when absent or not finite."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


def fmt_time(t: datetime) -> str:
    """A time in UTC to the minute (a naive time is taken as UTC)."""
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _release(p: PlanData, standard: bool) -> str:
    s = p.summary
    if standard:
        return f"standard plan, QA {s.verdict or 'not run'}"
    if not p.released:
        return "not released"
    return f"released, QA {s.verdict or 'not run'}"


def _review_line(r: PlanReview) -> str:
    text = f"{r.decision.value} by {r.by}, {fmt_time(r.at)}"
    return f"{text}: \u201c{r.comment}\u201d" if r.comment else text


def cover(flow: Flow, data: ReportInput) -> None:
    """Page 1: who, what, the prescription, every plan's release and the physicists' decisions."""
    flow.title("Treatment plan review")
    flow.para("rayrt plan report", size_pt=10, colour="#555555")
    flow.space(0.15)
    rows = [
        ("Patient", f"{data.patient_name or '(no name)'}  \u2014  id {data.patient_id}"),
        ("Job", data.job_id + (f", submitted by {data.submitted_by}" if data.submitted_by else "")),
        ("Report generated", fmt_time(data.generated_at)),
    ]
    if data.order:
        rx = data.order.prescription
        norm = rx.normalization
        rows.append(
            (
                "Prescription",
                f"{rx.target}: {rx.total_dose_gy:g} Gy in {rx.fractions} fraction(s) "
                f"({rx.dose_per_fraction_gy:.3g} Gy per fraction)",
            )
        )
        if norm.metric != "none":
            rows.append(
                (
                    "Normalisation",
                    f"{norm.metric} of {norm.structure or rx.target} = {norm.value_pct:g} % of prescription",
                )
            )
        if data.order.dose_levels:
            rows.append(("Dose levels", ", ".join(f"{k} {v:g} Gy" for k, v in sorted(data.order.dose_levels.items()))))
        rows.append(("Order", data.order.name))
    else:
        rows.append(("Prescription", "no medical order stored with the job"))
    rows.append(("Plans", ", ".join(p.machine for p in data.plans)))
    flow.fields(rows)

    flow.heading("Release decisions")
    latest = data.reviews.latest()
    table_rows, fills = [], []
    for n, p in enumerate(data.plans):
        r = latest.get(p.machine)
        table_rows.append([p.machine, _release(p, n == 0), _review_line(r) if r else "no review recorded"])
        fills.append(
            [
                None,
                STATUS_COLOURS.get(p.summary.verdict or "", None) if p.released else STATUS_COLOURS["not released"],
                STATUS_COLOURS.get(r.decision.value) if r else None,
            ]
        )
    flow.table(
        [Column("plan", 1.35), Column("QA / release", 1.65), Column("physicist's review (latest)", 4.07)],
        table_rows,
        fills,
    )

    if len(data.reviews.reviews) > len(latest):
        flow.heading("Review history", size_pt=10)
        hist = [[fmt_time(r.at), r.machine, r.decision.value, r.by, r.comment or "-"] for r in data.reviews.reviews]
        flow.table(
            [
                Column("when", 1.35),
                Column("plan", 1.2),
                Column("decision", 0.8),
                Column("by", 0.9),
                Column("comment", 2.82),
            ],
            hist,
            [[None, None, STATUS_COLOURS.get(r.decision.value), None, None] for r in data.reviews.reviews],
        )
    if data.notes:
        flow.heading("Notes", size_pt=10)
        for note in data.notes:
            flow.para(note, colour="#8a4b00")
    flow.space(0.2)
    flow.para(RECORD_NOTE, size_pt=9, style="italic")


def plan_summary(flow: Flow, data: ReportInput) -> None:
    """MU per fraction, modulation (x the open-field MU), segments, QA verdict, checks not passed."""
    flow.heading("Plan summary")
    rows, fills = [], []
    for p in data.plans:
        s = p.summary
        ratio = s.total_mu_per_fraction / s.open_field_mu if s.open_field_mu and p.released else None
        failed = "; ".join(s.failed_checks) or "none"
        rows.append(
            [
                s.machine,
                s.plan_id or "-",
                num(s.total_mu_per_fraction, 1) if p.released else "-",
                num(ratio, 2) + ("x" if ratio is not None else ""),
                str(s.segments) if p.released else "-",
                s.verdict or "not run",
                failed,
            ]
        )
        fills.append([None, None, None, None, None, STATUS_COLOURS.get(s.verdict or ""), None])
    flow.table(
        [
            Column("plan", 1.05),
            Column("plan id", 0.95),
            Column("MU / fx", 0.65, "right"),
            Column("x open field", 0.75, "right"),
            Column("segments", 0.7, "right"),
            Column("QA verdict", 0.75),
            Column("checks not passed", 2.22),
        ],
        rows,
        fills,
        size_pt=7.5,
    )
    flow.para(
        "MU / fx: monitor units per fraction of the whole plan; x open field: those MU over the MU of open fields "
        "of the same beams delivering the prescription (the modulation).",
        size_pt=7,
        colour="#555555",
    )


def _goal_value(g: GoalResult) -> str:
    if g.value is not None:
        return num(g.value, 2, g.unit)
    return num(g.value_gy, 2, "Gy")


def goals(flow: Flow, data: ReportInput) -> None:
    """Each goal of the order, per plan met or missed with the value achieved."""
    flow.heading("Goals")
    keys: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int | None] = {}
    for p in data.plans:
        for g in p.summary.goals:
            k = (g.structure, g.goal)
            if k not in ranks:
                keys.append(k)
                ranks[k] = g.rank
    if not keys:
        flow.para("The order has no goals that could be evaluated on these plans.")
        return
    per_plan = max(0.75, min(1.3, 4.3 / len(data.plans)))
    cols = [Column("structure", 1.05), Column("goal", 1.35), Column("rank", 0.4, "center")]
    cols += [Column(p.machine, per_plan, "center") for p in data.plans]
    rows, fills = [], []
    for k in keys:
        row = [k[0], k[1], str(ranks[k]) if ranks[k] is not None else "-"]
        fill: list[str | None] = [None, None, None]
        for p in data.plans:
            found = next((x for x in p.summary.goals if (x.structure, x.goal) == k), None)
            if found is None:
                row.append("-")
                fill.append(None)
                continue
            g = found
            row.append(
                ("met " if g.met else "missed ") + _goal_value(g) + (f"\n{g.limited_by}" if g.limited_by else "")
            )
            fill.append(STATUS_COLOURS["met" if g.met else "missed"])
        rows.append(row)
        fills.append(fill)
    flow.table(cols, rows, fills, size_pt=7.5)
    missing = [p.machine for p in data.plans if not p.summary.goals]
    if missing:
        flow.para(f"No goals judged for: {', '.join(missing)} (not released before QA, or no goals).", size_pt=7)


def _value(v: float | None) -> str:
    """A check's value or limit: 4 significant digits, an integer as such."""
    if v is None or not math.isfinite(v):
        return "-"
    v = float(v) + 0.0  # no "-0"
    return f"{v:.0f}" if v.is_integer() else f"{v:.4g}"


def _check_row(c: QACheck) -> list[str]:
    return [c.name, c.category or "-", c.status, _value(c.value), _value(c.limit), c.unit]


def qa_pages(flow: Flow, data: ReportInput) -> None:
    """Per plan: verdict, gamma against the standard plan, the independent dose check, every check."""
    flow.title("Quality assurance per machine", size_pt=14)
    for n, p in enumerate(data.plans):
        rep = p.qa
        flow.heading(f"{p.machine}: {rep.verdict.upper() if rep else 'no QA report'}")
        if rep is None:
            flow.para("QA did not run on this plan (no QA report stored).")
            continue
        g = rep.gamma
        when = fmt_time(rep.created_at)
        rows = [("QA run", when if n == 0 else f"{when}, after {rep.attempts} conversion attempt(s)")]
        if g is not None:
            c = g.criteria
            rows.append(
                (
                    "Gamma vs standard",
                    f"{g.pass_rate_pct:.2f} % pass ({c.dose_pct:g} %/{c.dta_mm:g} mm "
                    f"{'local' if c.local else 'global'}, cutoff {c.cutoff_pct:g} %; "
                    f"{g.n_passed}/{g.n_evaluated} voxels, mean {g.mean_gamma:.3f}, 95th pct {g.p95_gamma:.3f})",
                )
            )
        else:
            rows.append(("Gamma vs standard", "the reference (standard plan)" if n == 0 else "not run"))
        indep = [c for c in rep.checks if c.category == "dose_check"]
        rows.append(
            (
                "Independent dose",
                "; ".join(
                    f"{c.name}: {num(c.value, 2, c.unit)} (limit {num(c.limit, 2, c.unit)}, {c.status})" for c in indep
                )
                or "not run",
            )
        )
        flow.fields(rows, key_in=1.45)
        flow.table(
            [
                Column("check", 3.05),
                Column("category", 0.9),
                Column("status", 0.55, "center"),
                Column("value", 0.75, "right"),
                Column("limit", 0.65, "right"),
                Column("unit", 0.85),
            ],
            [_check_row(c) for c in rep.checks],
            [[None, None, STATUS_COLOURS.get(c.status), None, None, None] for c in rep.checks],
            size_pt=7.5,
        )
        for chk in rep.checks:
            if chk.status != "pass" and chk.detail:
                flow.para(f"{chk.name}: {chk.detail}", size_pt=7, colour="#444444")
        for note in rep.notes:
            flow.para(f"note: {note}", size_pt=7, colour="#444444")
