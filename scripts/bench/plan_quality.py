"""Plan quality on the OpenKBP head-and-neck patients (../shared/data/openkbp): each patient's
order is written mechanically from its ``goals.json`` (one squared deviation per dose level, a D99
minimum per PTV, D0.1cc criteria as max dose, mean criteria as mean dose; the same code for every
patient, no per-patient settings), planned by the recipe with the configured defaults up to the
standard plan. Per patient: criteria met by rayrt and by the clinical plan (both judged on the
dose grid), dose score (mean |dose - clinical dose| over BODY, Gy), MU per fraction, segments,
seconds. Prints a table and writes scripts/bench/results/plan_quality.json.

    .venv/bin/python scripts/bench/plan_quality.py [--patients pt_201,pt_202] [--set KEY=VALUE ...]

This is the start of issue 13's benchmark: the TG-119 geometries and the conversions are not in it yet.
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
    """The medical order of an OpenKBP patient, written from its criteria."""
    from rayrt.domain.order import parse_order

    objectives = [
        {"structure": s, "kind": "squared_deviation", "dose_gy": d, "priority": 100}
        for s, d in goals["dose_levels"].items()
    ]
    for c in goals["goals"]:
        if c["metric"] == "D99":
            objectives.append(
                {"structure": c["structure"], "kind": "min_dvh", "dose_gy": c["gy"], "volume_pct": 99, "priority": 100}
            )
        elif c["metric"] == "mean":
            objectives.append({"structure": c["structure"], "kind": "mean_dose", "dose_gy": c["gy"], "priority": 10})
        else:
            objectives.append({"structure": c["structure"], "kind": "max_dose", "dose_gy": c["gy"], "priority": 50})
    rx = goals["prescription"]
    return parse_order(
        {
            "name": goals["case"],
            "prescription": {"target": rx["target"], "total_dose_gy": rx["dose_gy"], "fractions": rx["fractions"]},
            "objectives": objectives,
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


def plan_patient(folder: Path, overrides: dict) -> dict:
    from rayrt.domain.planning import planning_request
    from rayrt.pipeline import run_recipe

    goals = json.loads((folder / "goals.json").read_text())
    t = time.perf_counter()
    res = run_recipe(str(folder), order_from_goals(goals), planning_request(overrides, []), until="normalize")
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
        "mu_per_fraction": std.plan.total_mu,
        "segments": sum(len(b.segments) for b in std.plan.beams),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", default=None, help="comma list (default: all)")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="planning option KEY=VALUE")
    a = ap.parse_args(argv)
    data = shared_data_dir()
    if data is None or not (data / "openkbp").is_dir():
        raise SystemExit("shared data (openkbp) not found; set RAYRT_SHARED")
    from rayrt.cli.planning_options import read_options

    overrides = read_options(None, a.settings)
    wanted = set(a.patients.split(",")) if a.patients else None
    cases = [p for p in sorted((data / "openkbp").iterdir()) if p.is_dir() and (wanted is None or p.name in wanted)]
    rows = [plan_patient(p, overrides) for p in cases]
    print_table(
        ["case", "criteria", "rayrt met", "clinical met", "dose score (Gy)", "MU/fx", "segments", "seconds"],
        [
            [
                r["case"],
                len(r["criteria"]),
                r["rayrt_met"],
                r["clinical_met"],
                r["dose_score_gy"],
                r["mu_per_fraction"],
                r["segments"],
                r["seconds"],
            ]
            for r in rows
        ],
        title="OpenKBP: the recipe's standard plan from each patient's goals (configured defaults)",
    )
    total = {
        k: sum(r[k] if k != "criteria" else len(r[k]) for r in rows) for k in ("criteria", "rayrt_met", "clinical_met")
    }
    print(
        f"total: rayrt met {total['rayrt_met']} of {total['criteria']} criteria, "
        f"the clinical plans {total['clinical_met']}"
    )
    write_json(
        RESULTS_DIR / "plan_quality.json",
        {"overrides": overrides, "patients": rows, "total": total, "machine": machine_info()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
