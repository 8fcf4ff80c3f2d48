"""Plan quality on the OpenKBP head-and-neck patients (../shared/data/openkbp): each patient's
order is written mechanically from its ``goals.json`` as clinical goals with ranks (organ maxima
1, PTV D99 2, organ means 3) and the PTVs' dose levels, no objectives (the same code for every
patient, no per-patient settings), planned by the recipe with the configured defaults up to the
standard plan. Per patient: criteria met by rayrt and by the clinical plan (both judged on the
dose grid), dose score (mean |dose - clinical dose| over BODY, Gy), MU per fraction, segments,
seconds. Prints a table and writes scripts/bench/results/plan_quality.json.

    .venv/bin/python scripts/bench/plan_quality.py [--patients pt_201,pt_202|none] [--tg119 cshape,...|none]
        [--machines truebeam_m120,versahd_agility] [--set KEY=VALUE ...] [--out plan_quality.json]

The TG-119 geometries (rayrt.imaging.tg119_cases: C-shape easy and hard, multitarget, mock
prostate, mock head and neck) are planned from their goal orders alone; ``--machines`` also
converts each OpenKBP standard plan (QA-gated) and reports the release per machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, shared_data_dir, write_json  # noqa: E402  (after the path insert)


def order_from_goals(goals: dict):
    """The medical order of an OpenKBP patient, written from its criteria as clinical goals with
    ranks by the usual clinical rule (PLANNING.md): organ maxima (D0.1cc) rank 1, target coverage
    (D99) rank 2, organ means rank 3; the PTVs' dose levels from ``dose_levels``. No objectives:
    rayrt plans from the goals."""
    from rayrt.domain.order import parse_order

    rank = {"D0.1cc": 1, "D99": 2, "mean": 3}
    rx = goals["prescription"]
    return parse_order(
        {
            "name": goals["case"],
            "prescription": {"target": rx["target"], "total_dose_gy": rx["dose_gy"], "fractions": rx["fractions"]},
            "dose_levels": dict(goals["dose_levels"]),
            "goals": [
                {
                    "structure": c["structure"],
                    "metric": c["metric"],
                    "op": c["op"],
                    "value": c["gy"],
                    "rank": rank[c["metric"]],
                }
                for c in goals["goals"]
            ],
        }
    )


def criterion_value(dose: np.ndarray, mask: np.ndarray, metric: str, voxel_cc: float) -> float:
    """D99, mean or D0.1cc (Gy) of ``dose`` inside ``mask``."""
    from rayrt.qa.dvh import dose_at_volume

    v = dose[mask]
    if metric == "mean":
        return float(v.mean())
    if metric == "D99":
        return float(dose_at_volume(v, 99.0))
    return float(dose_at_volume(v, min(100.0, 0.1 / (v.size * voxel_cc) * 100.0)))  # D0.1cc


def plan_patient(folder: Path, overrides: dict, machines: list[str]) -> dict:
    from rayrt.domain.planning import planning_request
    from rayrt.pipeline import run_recipe

    goals = json.loads((folder / "goals.json").read_text())
    t = time.perf_counter()
    res = run_recipe(
        str(folder),
        order_from_goals(goals),
        planning_request(overrides, machines),
        until="qa" if machines else "normalize",
    )
    seconds = time.perf_counter() - t
    std, geo, study = res["standard_plan"], res["geometry"], res["study"]
    plan_dose = np.asarray(std.dose, np.float64)
    clinical = study.doses[0].resample(geo.dose_grid, order=1, fill=0.0).array.astype(np.float64)
    vcc = geo.dose_grid.voxel_volume_cc
    criteria = []
    for c in goals["goals"]:
        mask = geo.dose_masks[c["structure"]]
        mine, theirs = (criterion_value(d, mask, c["metric"], vcc) for d in (plan_dose, clinical))
        ok = (lambda x: x >= c["gy"]) if c["op"] == ">=" else (lambda x: x <= c["gy"])
        criteria.append(
            {**c, "rayrt_gy": mine, "clinical_gy": theirs, "rayrt_met": ok(mine), "clinical_met": ok(theirs)}
        )
    body = geo.dose_masks[geo.external] if geo.external else np.ones(geo.dose_grid.shape, bool)
    return {
        "case": folder.name,
        "criteria": criteria,
        "rayrt_met": sum(c["rayrt_met"] for c in criteria),
        "clinical_met": sum(c["clinical_met"] for c in criteria),
        "dose_score_gy": float(np.abs(plan_dose - clinical)[body].mean()),
        **_complexity(std),
        "conversions": _conversions(res, machines),
        "beam_set": _beam_set(res),
        "seconds": seconds,
    }


def _conversions(res, machines: list[str]) -> list[dict]:
    """Per target machine: released or not, QA verdict, mode, gamma vs the standard plan, MU, segments."""
    if not machines:
        return []
    verdicts = {r.machine: r.verdict for r in res["qa"].reports}
    out = []
    for mp in res["converted"].plans:
        last = mp.attempts[-1] if mp.attempts else None
        out.append(
            {
                "machine": mp.machine,
                "released": mp.plan is not None and verdicts.get(mp.machine) != "fail",
                "verdict": verdicts.get(mp.machine, mp.status),
                "mode": mp.mode,
                "attempts": len(mp.attempts),
                "gamma_pct": None if last is None else last.gamma_vs_standard_pct,
                "mu_per_fraction": None if mp.plan is None else mp.plan.total_mu,
                "segments": None if mp.plan is None else sum(len(b.segments) for b in mp.plan.beams),
                "max_segments_per_beam": None if mp.plan is None else max(len(b.segments) for b in mp.plan.beams),
                "min_segment_mu": None if mp.plan is None else min(sg.mu for b in mp.plan.beams for sg in b.segments),
            }
        )
    return out


def plan_tg119(case: str, overrides: dict, spacing_mm: float) -> dict:
    """One TG-119 geometry (rayrt.imaging.tg119_cases) planned from its goal order alone."""
    import tempfile

    from rayrt.domain.planning import planning_request
    from rayrt.imaging.tg119_cases import tg119_case, write_tg119_case
    from rayrt.pipeline import run_recipe

    _, order = tg119_case(case, spacing_mm)
    with tempfile.TemporaryDirectory(prefix="rayrt-pq-") as tmp:
        folder = write_tg119_case(case, Path(tmp) / case, spacing_mm)
        t = time.perf_counter()
        res = run_recipe(str(folder), order, planning_request(overrides, []), until="normalize")
        seconds = time.perf_counter() - t
    std = res["standard_plan"]
    return {
        "case": f"tg119_{case}",
        "criteria": [
            {
                "goal": g.label,
                "rank": g.rank,
                "rayrt": g.value,
                "rayrt_met": g.met,
                "limited_by": std.goal_limits.get(g.label, ""),
            }
            for g in std.goals
        ],
        "rayrt_met": sum(g.met for g in std.goals),
        "clinical_met": None,
        "dose_score_gy": None,
        **_complexity(std),
        "beam_set": _beam_set(res),
        "seconds": seconds,
    }


def _beam_set(res) -> dict | None:
    """With beam_angle_alternatives: each set's fluence standing and the set kept (1-based)."""
    choice = res["beam_set"]
    if choice is None:
        return None
    return {
        "chosen": choice.chosen + 1,
        "sets": [{"gantry_deg": s.gantry_deg, "goals_met": s.goals_met, "seconds": s.seconds} for s in choice.sets],
    }


def _complexity(std) -> dict:
    """MU, the open-field ratio, segments, and the smallest segment's MU and open area (cm²)."""
    from rayrt.domain.segments import segment_open_area_cm2
    from rayrt.machines import get_machine

    segs = [len(b.segments) for b in std.plan.beams]
    machine = get_machine(std.plan.machine)
    areas = [segment_open_area_cm2(s, machine) for b in std.plan.beams for s in b.segments]
    return {
        "mu_per_fraction": std.plan.total_mu,
        "open_field_mu": std.open_field_mu,
        "mu_ratio": std.modulation,
        "segments": sum(segs),
        "max_segments_per_beam": max(segs),
        "min_segment_mu": min(s.mu for b in std.plan.beams for s in b.segments),
        "min_segment_area_cm2": min(areas),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", default=None, help="comma list of OpenKBP patients (default: all; 'none' for none)")
    ap.add_argument(
        "--tg119", default="cshape,cshape_hard,multitarget,prostate,headneck", help="TG-119 cases ('none' for none)"
    )
    ap.add_argument("--tg119-spacing-mm", type=float, default=4.0)
    ap.add_argument(
        "--machines",
        default="",
        help="also convert each OpenKBP standard plan to these machines (QA-gated), e.g. truebeam_m120,versahd_agility",
    )
    ap.add_argument("--set", dest="settings", action="append", default=[], help="planning option KEY=VALUE")
    ap.add_argument("--out", default="plan_quality.json", help="results file name in scripts/bench/results")
    a = ap.parse_args(argv)
    data = shared_data_dir()
    from rayrt.cli.planning_options import read_options

    overrides = read_options(None, a.settings)
    rows = []
    if a.patients != "none":
        if data is None or not (data / "openkbp").is_dir():
            raise SystemExit("shared data (openkbp) not found; set RAYRT_SHARED")
        wanted = set(a.patients.split(",")) if a.patients else None
        cases = [p for p in sorted((data / "openkbp").iterdir()) if p.is_dir() and (wanted is None or p.name in wanted)]
        machines = [m for m in a.machines.split(",") if m]
        rows += [plan_patient(p, overrides, machines) for p in cases]
    if a.tg119 != "none":
        rows += [plan_tg119(c, overrides, a.tg119_spacing_mm) for c in a.tg119.split(",")]
    print_table(
        [
            "case",
            "goals",
            "rayrt met",
            "clinical met",
            "dose score (Gy)",
            "MU/fx",
            "MU/open",
            "segments",
            "max/beam",
            "min MU",
            "beam set",
            "seconds",
        ],
        [
            [
                r["case"],
                len(r["criteria"]),
                r["rayrt_met"],
                "-" if r["clinical_met"] is None else r["clinical_met"],
                "-" if r["dose_score_gy"] is None else r["dose_score_gy"],
                r["mu_per_fraction"],
                r["mu_ratio"],
                r["segments"],
                r["max_segments_per_beam"],
                r["min_segment_mu"],
                "-"
                if r["beam_set"] is None
                else f"{r['beam_set']['chosen']} of {len(r['beam_set']['sets'])} "
                f"({'/'.join(str(x['goals_met']) for x in r['beam_set']['sets'])} met)",
                r["seconds"],
            ]
            for r in rows
        ],
        title="Plan quality: the recipe's standard plan from each case's clinical goals (configured defaults)",
    )
    conv = [(r["case"], c) for r in rows for c in r.get("conversions", [])]
    if conv:
        print_table(
            [
                "case",
                "machine",
                "released",
                "verdict",
                "mode",
                "attempts",
                "gamma %",
                "MU/fx",
                "segments",
                "max/beam",
                "min MU",
            ],
            [
                [
                    case,
                    c["machine"],
                    c["released"],
                    c["verdict"],
                    c["mode"],
                    c["attempts"],
                    c["gamma_pct"],
                    c["mu_per_fraction"],
                    c["segments"],
                    c["max_segments_per_beam"],
                    c["min_segment_mu"],
                ]
                for case, c in conv
            ],
            title="Conversions of the OpenKBP standard plans (QA-gated)",
        )
    kbp = [r for r in rows if r["clinical_met"] is not None]
    total = {
        "criteria": sum(len(r["criteria"]) for r in kbp),
        "rayrt_met": sum(r["rayrt_met"] for r in kbp),
        "clinical_met": sum(r["clinical_met"] for r in kbp),
        "tg119_goals": sum(len(r["criteria"]) for r in rows if r["clinical_met"] is None),
        "tg119_met": sum(r["rayrt_met"] for r in rows if r["clinical_met"] is None),
    }
    print(
        f"OpenKBP: rayrt met {total['rayrt_met']} of {total['criteria']} criteria, the clinical plans "
        f"{total['clinical_met']}; TG-119: {total['tg119_met']} of {total['tg119_goals']} goals"
    )
    write_json(
        RESULTS_DIR / a.out,
        {"overrides": overrides, "cases": rows, "total": total, "machine": machine_info()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
