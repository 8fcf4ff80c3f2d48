"""Optimisation benchmarks: rayrt's fluence optimiser against pyRadPlan 0.5.0, and the whole
`rayrt plan` pipeline (Dij, FMO, sequencing, DAO, normalisation) on TG-119.

    .venv/bin/python scripts/bench/optimize.py --vs pyradplan [--setup A] [--rerun-pyradplan]
    .venv/bin/python scripts/bench/optimize.py --pipeline [--setup A,B] [--case mat,builtin]

``--vs pyradplan`` (per setup, docs/REFERENCE.md): pyRadPlan computes its Dij and runs its own
L-BFGS-B on the TG119.mat objectives (OuterTarget squared deviation 50 Gy x1000, Core squared
over-dose 25 Gy x300, BODY squared over-dose 30 Gy x100, its overlap priorities) in its own venv
(scripts/bench/pyradplan_runner.py; the result is reused from scripts/bench/work/ unless
``--rerun-pyradplan``) and exports that Dij and its objective voxel groups (.npz). rayrt then
optimises on *the same Dij and voxel groups*; both weight vectors are evaluated with rayrt's
objective function on that Dij (it reproduces pyRadPlan's own value). Reported: pyRadPlan's
optimisation time and iterations; rayrt's time to reach pyRadPlan's final objective (or better)
and its time to converge; their ratio. rayrt's time is the whole ``optimize_fluence`` call: it
includes its set-up (the dense copy of the fullest Dij rows, the screening group sums, the Jacobi
scaling) and starts from uniform beamlet weights scaled so the mean target dose is the
prescription (50 Gy); the row subset of the Dij (``problem_from_voxel_groups``, reported as
``row_subset_s``) is not timed, as pyRadPlan's own Dij preparation is not.

``--pipeline``: the planning recipe (what `rayrt plan` runs, rayrt.pipeline.run_recipe) on TG119.mat
(``mat``) and/or the built-in TG-119 phantom (``builtin``), standard machine, the TG-119 goal order
(rayrt.optimize.recipes.tg119_goal_order), max 15 segments per beam; setup A = 5 beams, 5 mm dose
grid; B = 9 beams, 3 mm; Q = 9 beams, 5 mm (the plan-quality check); H = Q with
tg119_hard_goal_order, 600 FMO iterations and 8 DAO rounds (aims at core D10 <= 10 Gy). Reports each stage's time and
peak RSS (VmHWM reset per stage), sequencing and DAO time per beam, and the TG-119 goals.

Timings on the shared 2-core development machine are under load (the load average is recorded;
rayrt's process CPU time, ``cpu_s``, all threads, is recorded too: it varies less with the load).
Results: scripts/bench/results/optimize.json (merged per part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_PYTHON,
    REPO_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    machine_info,
    print_table,
    read_json,
    run_measured,  # noqa: E402
    shared_data_dir,
    write_json,
)

sys.path.insert(0, str(REPO_ROOT))
OUT = RESULTS_DIR / "optimize.json"
KIND = {
    "SquaredDeviation": ("squared_deviation", "d_ref"),
    "SquaredOverdosing": ("squared_overdose", "d_max"),
    "SquaredUnderdosing": ("squared_underdose", "d_min"),
}


def _merge(key: str, value) -> None:
    data = read_json(OUT) if OUT.exists() else {}
    if key in data:  # keep earlier runs (timings vary a lot with the load of the shared machine)
        data.setdefault("history", []).append({"key": key, **data[key]})
    value["time_utc"] = machine_info().get("time_utc")
    data[key] = value
    data["machine"] = machine_info()
    write_json(OUT, data)


def ensure_pyradplan(setup: str, rerun: bool) -> tuple[dict, Path]:
    js = WORK_DIR / f"pyradplan_opt_{setup}.json"
    npz = WORK_DIR / f"pyradplan_{setup}.npz"
    if rerun or not js.exists() or not npz.exists():
        if not BENCH_PYTHON.exists():
            raise SystemExit("pyRadPlan venv missing: run `bash scripts/bench/setup_pyradplan.sh` first")
        m = run_measured(
            [
                str(BENCH_PYTHON),
                str(REPO_ROOT / "scripts/bench/pyradplan_runner.py"),
                "optimize",
                "--setup",
                setup,
                "--out",
                str(js),
                "--dij-out",
                str(npz),
            ]
        )
        if m.returncode != 0:
            raise SystemExit(f"pyRadPlan run failed:\n{m.stderr[-3000:]}")
        d = read_json(js)
        d["subprocess_wall_s"], d["subprocess_peak_rss_mib"] = m.wall_s, m.peak_rss_mib
        write_json(js, d)
    return read_json(js), npz


def _warm_up_jit() -> None:
    """Compile (or load from numba's on-disk cache) rayrt's optimiser kernels, serial and parallel,
    on a tiny problem before anything is timed: a one-time start-up cost, not optimisation work."""
    import numpy as np
    import scipy.sparse as sp

    import rayrt.optimize.sparse as sparse_mod
    from rayrt.optimize.fmo import FluenceOptions, optimize_fluence
    from rayrt.optimize.problem import problem_from_voxel_groups

    a = sp.random(3000, 40, density=0.5, format="csc", dtype=np.float32, random_state=0)
    terms = [
        dict(structure="T", kind="squared_deviation", dose_gy=1.0, weight=1.0, voxels=np.arange(100)),
        dict(structure="B", kind="squared_overdose", dose_gy=1.0, weight=1.0, voxels=np.arange(100, 3000)),
    ]
    old = sparse_mod.PARALLEL_MIN_NNZ
    try:
        for limit in (0, 10**12):
            sparse_mod.PARALLEL_MIN_NNZ = limit
            optimize_fluence(
                problem_from_voxel_groups(a, terms, target="T", prescription_gy=1.0), FluenceOptions(max_iterations=5)
            )
    finally:
        sparse_mod.PARALLEL_MIN_NNZ = old


def vs_pyradplan(setup: str, rerun: bool) -> dict:
    import numpy as np
    import scipy.sparse as sp

    from rayrt.optimize.fmo import FluenceOptions, optimize_fluence
    from rayrt.optimize.problem import problem_from_voxel_groups

    prp, npz = ensure_pyradplan(setup, rerun)
    _warm_up_jit()
    t0 = time.perf_counter()
    z = np.load(npz)
    dij = sp.csc_matrix((z["dij_data"], z["dij_indices"], z["dij_indptr"]), shape=tuple(int(v) for v in z["dij_shape"]))
    desc = json.loads(str(z["objectives_json"]))
    terms = [
        dict(
            structure=o["structure"],
            kind=KIND[o["type"]][0],
            dose_gy=o["parameters"][KIND[o["type"]][1]],
            weight=o["priority"],
            voxels=z[f"obj_voxels_{o['group']}"],
        )
        for o in desc
    ]
    target = next(o["structure"] for o in desc if o["voi_type"] == "TARGET")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    problem = problem_from_voxel_groups(dij, terms, target=target, prescription_gy=50.0)
    t_setup = time.perf_counter() - t0
    del dij
    w_prp = np.asarray(prp["weights"], dtype=float)
    f_prp = problem.total_objective(problem.dose(w_prp))
    load0 = machine_info()["load_avg_1min"]
    c0 = time.process_time()
    r_eq = optimize_fluence(problem, FluenceOptions(target_objective=f_prp, max_iterations=2000))
    cpu_eq = time.process_time() - c0
    dense_rows = problem.dij.dense_rows  # built inside r_eq's timed call
    c0 = time.process_time()
    r_cv = optimize_fluence(problem, FluenceOptions(max_iterations=1000))
    cpu_cv = time.process_time() - c0
    load1 = machine_info()["load_avg_1min"]
    reached = r_eq.objective <= f_prp * (1 + 1e-9)
    res = {
        "setup": setup,
        "dij": {
            "voxels": int(z["dij_shape"][0]),
            "bixels": int(z["dij_shape"][1]),
            "nnz": int(z["dij_data"].size),
            "objective_rows": problem.dij.num_rows,
            "load_npz_s": t_load,
            "row_subset_s": t_setup,
        },
        "pyradplan": {
            "time_optimization_s": prp["time_optimization_s"],
            "iterations": prp["num_iter"],
            "objective_own": prp["objective_final"],
            "objective_rayrt_function": f_prp,
            "load_avg_1min": prp.get("machine", {}).get("load_avg_1min"),
        },
        "rayrt_to_equal": {
            "time_s": r_eq.seconds,
            "cpu_s": cpu_eq,
            "iterations": r_eq.iterations,
            "evaluations": r_eq.evaluations,
            "objective": r_eq.objective,
            "reached": bool(reached),
        },
        "rayrt_converged": {
            "time_s": r_cv.seconds,
            "cpu_s": cpu_cv,
            "iterations": r_cv.iterations,
            "evaluations": r_cv.evaluations,
            "objective": r_cv.objective,
            "message": r_cv.message,
        },
        "rayrt_settings": {
            "options": FluenceOptions().model_dump(),
            "dense_rows": int(dense_rows),
            "start": "uniform weights scaled to mean target dose = prescription",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "timed": "whole optimize_fluence call incl. dense-row copy, screening group sums, Jacobi scaling",
        },
        "speedup_to_equal_objective": prp["time_optimization_s"] / r_eq.seconds if reached else None,
        "speedup_converged": prp["time_optimization_s"] / r_cv.seconds,
        "load_avg_1min": [load0, load1],
        "note": "same Dij and objective voxel groups for both; both weight vectors evaluated with rayrt's objective; "
        "pyRadPlan ran in its own process earlier (see its load average); timings under load on the shared machine",
    }
    print_table(
        ["engine", "time (s)", "iterations", "objective"],
        [
            ["pyRadPlan 0.5.0", prp["time_optimization_s"], prp["num_iter"], f_prp],
            ["rayrt (to equal)", r_eq.seconds, r_eq.iterations, r_eq.objective],
            ["rayrt (converged)", r_cv.seconds, r_cv.iterations, r_cv.objective],
        ],
        title=f"fluence optimisation, setup {setup}: nnz {res['dij']['nnz']:,}, speed-up to equal objective "
        f"{res['speedup_to_equal_objective'] and round(res['speedup_to_equal_objective'], 2)}x",
    )
    return res


SETUPS = {
    "A": ([0.0, 72.0, 144.0, 216.0, 288.0], 5.0),
    "B": ([float(a) for a in range(0, 360, 40)], 3.0),
    "Q": ([float(a) for a in range(0, 360, 40)], 5.0),
    "H": ([float(a) for a in range(0, 360, 40)], 5.0),
}


def pipeline(setup: str, case: str, sequencer: str) -> dict:
    """The planning recipe (what `rayrt plan`, a service job and the demo run) up to the standard
    plan, on the case with the setup's beams and grid, at most 15 segments per beam."""
    from rayrt.domain.planning import planning_request
    from rayrt.optimize.recipes import tg119_goal_order, tg119_hard_goal_order
    from rayrt.pipeline import StageEvent, run_recipe

    if setup == "H":  # aim at the hard goal: core pushed harder, longer FMO and DAO
        tg119_goal_order = tg119_hard_goal_order  # noqa: F811

    if case == "mat":
        from rayrt.imaging.phantoms import load_mat_phantom

        data = shared_data_dir()
        if data is None:
            raise SystemExit("shared data (TG119.mat) not found")
        study = load_mat_phantom(data / "phantoms" / "TG119.mat")
        order = tg119_goal_order(target="OuterTarget")
        tgt = "OuterTarget"
    else:
        from rayrt.imaging.phantoms import tg119_phantom

        study = tg119_phantom()
        order = tg119_goal_order()
        tgt = "PTV"
    angles, grid_mm = SETUPS[setup]
    req = planning_request(
        {
            "gantry_deg": angles,
            "dose_grid_mm": grid_mm,
            "max_segments": 15,
            "sequencer": sequencer,
            "fmo_iterations": 600 if setup == "H" else 400,
            "dao_rounds": 8 if setup == "H" else 4,
            "dao_iterations": 60,
        },
        [],
    )
    seconds: dict[str, float] = {}
    started: dict[str, float] = {}

    def on_event(ev: StageEvent) -> None:
        if ev.kind == "started":
            started[ev.stage] = time.perf_counter()
        elif ev.kind == "finished" and ev.stage in started:
            seconds[ev.stage] = time.perf_counter() - started[ev.stage]

    t0 = time.perf_counter()
    res = run_recipe(
        study,
        order,
        req,
        until="normalize",
        on_event=on_event,
    )
    wall = time.perf_counter() - t0
    std = res["standard_plan"]
    dvh = std.dvh
    from rayrt.machines import get_machine
    from rayrt.qa.deliverability import check_plan

    deliv = check_plan(std.plan, get_machine(std.plan.machine))
    goals = {
        "target_d95_gy": dvh[tgt]["d95_gy"],
        "target_d10_gy": dvh[tgt]["d10_gy"],
        "core_d10_gy": dvh["Core"]["d10_gy"],
    }
    goals["easy_goals_met"] = bool(
        goals["target_d95_gy"] >= 50 - 1e-3 and goals["target_d10_gy"] <= 55 and goals["core_d10_gy"] <= 25
    )
    goals["hard_goal_met"] = bool(goals["easy_goals_met"] and goals["core_d10_gy"] <= 10)
    n = len(angles)
    fl = res["fluence"]
    out = {
        "setup": setup,
        "case": case,
        "sequencer": sequencer,
        "beams": n,
        "dose_grid_mm": grid_mm,
        "wall_s": wall,
        "stages": {k: {"seconds": v} for k, v in seconds.items()},
        "dij": {"nnz": res["dij"].nnz, "bixels": res["dij"].num_bixels, "voxels": res["dij"].num_voxels},
        "fmo": {
            "objective": fl.objective,
            "iterations": fl.iterations,
            "evaluations": fl.evaluations,
            "max_violation_gy": fl.max_violation_gy,
        },
        "sequencing_plus_dao_per_beam_s": (seconds["sequence"] + seconds["dao"]) / n,
        "sequencing_per_beam_s": seconds["sequence"] / n,
        "dao_per_beam_s": seconds["dao"] / n,
        "segments": sum(len(b.segments) for b in std.plan.beams),
        "mu_per_fraction": std.plan.total_mu,
        "deliverable": deliv.deliverable,
        "goals": goals,
        "load_avg_1min": machine_info()["load_avg_1min"],
    }
    print_table(
        ["stage", "time (s)"],
        [[k, v["seconds"]] for k, v in out["stages"].items()],
        title=f"planning recipe, setup {setup} ({case}, {n} beams, {grid_mm} mm): {out['segments']} segments, "
        f"target D95 {goals['target_d95_gy']:.2f} D10 {goals['target_d10_gy']:.2f}, "
        f"core D10 {goals['core_d10_gy']:.2f} Gy, "
        f"deliverable {out['deliverable']}",
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", choices=["pyradplan"], default=None)
    ap.add_argument("--pipeline", action="store_true")
    ap.add_argument("--setup", default="A", help="comma list of A, B (and Q for --pipeline)")
    ap.add_argument("--case", default="mat", help="comma list of mat, builtin (for --pipeline)")
    ap.add_argument("--sequencer", default="sweep")
    ap.add_argument("--rerun-pyradplan", action="store_true")
    a = ap.parse_args(argv)
    if not a.vs and not a.pipeline:
        ap.error("give --vs pyradplan and/or --pipeline")
    for s in a.setup.split(","):
        if a.vs:
            _merge(f"vs_pyradplan_{s}", vs_pyradplan(s, a.rerun_pyradplan))
        if a.pipeline:
            for c in a.case.split(","):
                _merge(f"pipeline_{s}_{c}", pipeline(s, c, a.sequencer))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
