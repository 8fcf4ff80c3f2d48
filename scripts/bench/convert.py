"""Benchmark: one standard plan converted to 4 machines, single process vs a process pool; plus the gamma tool vs pymedphys.

Plans the case once on the standard machine (rayrt.optimize.planner.plan_standard), then times
``rayrt.convert.convert.convert_plan`` to the target machines (default: synergy_mlci2,
truebeam_m120, versahd_agility, halcyon) in this process (``workers=1``) and in a
``concurrent.futures`` process pool (``--workers``, spawned processes with one numba thread each;
the Ray actor pool of the service is measured elsewhere). The commissioning-curve cache
(``$RAYRT_CACHE_DIR``) is warmed before both timings so they measure conversion only, and its
cold cost is reported separately. Finally it runs the gamma benchmark (scripts/bench/gamma.py,
rayrt's gamma vs pymedphys, in a subprocess) and embeds its JSON.

Usage:  .venv/bin/python scripts/bench/convert.py [--case small|tg119|demo] [--workers 2] [--machines a,b,c,d]
                                                 [--gamma full|small|none] [--no-pymedphys] [--no-pool]
                                                 [--standard-cache FILE.pkl] [--baseline OLD.json] [--out FILE.json]
``--case demo`` plans the standard plan as ``rayrt demo`` does (the DICOM phantom through the
service's stages with DEMO_PLANNING) and converts with DEMO_CONVERSION to the demo's machines.
Writes scripts/bench/results/convert.json (demo: convert_demo.json) and prints a table with
every attempt's QA outcome. Timings on the shared 2-core
developer machine are under load from other developers: the lead reruns them on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, machine_info, print_table, write_json  # noqa: E402

DEFAULT_MACHINES = "synergy_mlci2,truebeam_m120,versahd_agility,halcyon"


def plan_case(case: str):
    from rayrt.convert.convert import standard_input_from_result
    from rayrt.machines import get_machine
    from rayrt.imaging.phantoms import tg119_order, tg119_phantom
    from rayrt.optimize.planner import PlanningOptions, plan_standard

    m = get_machine("standard")
    order = tg119_order()
    if case == "tg119":
        study = tg119_phantom()
        angles = [i * 40.0 for i in range(9)]
        opts = PlanningOptions(dose_grid_mm=5.0, fmo_iterations=200, dao_rounds=3)
    elif case == "demo":  # the service demo's case: its DICOM phantom through the service's own planning stages
        return plan_demo_case()
    else:
        study = tg119_phantom(6.0)
        angles = [0.0, 72.0, 144.0, 216.0, 288.0]
        opts = PlanningOptions(dose_grid_mm=8.0, fmo_iterations=100, dao_rounds=2, dao_iterations=30)
    t = time.perf_counter()
    res = plan_standard(study, order, m, angles, opts)
    t_plan = time.perf_counter() - t
    return standard_input_from_result(res, study, order, m), res, t_plan, {"case": case, "beams": len(angles), "dose_grid_mm": opts.dose_grid_mm,
                                                                          "ct_spacing_mm": list(study.primary.grid.spacing_mm)}


def plan_demo_case():
    """The standard plan exactly as ``rayrt demo`` makes it: the TG-119 phantom written as DICOM
    (4 mm CT, RTSTRUCT), loaded back, and planned by the service's stages (rayrt.stages, load ...
    normalize, in this process) with the demo's PlanningRequest (rayrt.cli.demo.DEMO_PLANNING);
    the conversion input is built by ``rayrt.stages.standard_input`` as the convert stage does."""
    from rayrt import stages as S
    from rayrt.cli.demo import DEMO_PLANNING
    from rayrt.imaging.phantoms import tg119_order, write_tg119

    order = tg119_order()
    req = S.PlanningRequest(**{**DEMO_PLANNING, "machines": []})
    with tempfile.TemporaryDirectory(prefix="rayrt-bench-demo-") as d:
        case_dir = write_tg119(Path(d) / "tg119", 4.0)
        t = time.perf_counter()
        res = S.plan_local(case_dir, order, req, stages=["load", "structures", "dvh", *S.PLANNING_STAGES[:S.PLANNING_STAGES.index("normalize") + 1]])
        t_plan = time.perf_counter() - t
    std, geo = res["standard_plan"], res["geometry"]
    si = S.standard_input(std, geo, order)

    class _Res:  # what main() reads of a PlanningResult
        report = {"dvh": std.dvh}

    return si, _Res(), t_plan, {"case": "demo", "beams": req.num_beams, "dose_grid_mm": req.dose_grid_mm, "ct_spacing_mm": [4.0, 4.0, 4.0],
                                "planning": "rayrt.stages (load ... normalize) with rayrt.cli.demo.DEMO_PLANNING",
                                "standard_mu_per_fraction": std.plan.total_mu}


def run_gamma_bench(kind: str, no_pymedphys: bool) -> dict | None:
    """scripts/bench/gamma.py in a subprocess; its JSON (None when skipped or failed)."""
    if kind == "none":
        return None
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "bench" / "gamma.py")]
    if kind == "small":
        cmd.append("--small")
    if no_pymedphys:
        cmd.append("--no-pymedphys")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"error": f"gamma benchmark exited {proc.returncode}", "stderr_tail": proc.stderr[-1000:]}
    path = RESULTS_DIR / ("gamma_small.json" if kind == "small" else "gamma.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["wall_seconds"] = time.perf_counter() - t
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["small", "tg119", "demo"], default="tg119",
                    help="demo: the service demo's case and conversion settings (rayrt.cli.demo), its 3 machines by default")
    ap.add_argument("--machines", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gamma", choices=["full", "small", "none"], default="full")
    ap.add_argument("--no-pymedphys", action="store_true")
    ap.add_argument("--out", default=None, help="JSON output (default results/convert.json; --case demo: results/convert_demo.json)")
    ap.add_argument("--no-pool", action="store_true", help="only the serial conversions (faster iteration)")
    ap.add_argument("--standard-cache", default=None, help="pickle of the standard plan input: read when present, else written "
                    "(iterate on conversions without re-planning; delete it after changing the planner)")
    ap.add_argument("--baseline", default=None, help="an earlier result JSON of this script to embed as 'baseline' (before/after)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(RESULTS_DIR / ("convert_demo.json" if args.case == "demo" else "convert.json"))

    os.environ.setdefault("RAYRT_CACHE_DIR", tempfile.mkdtemp(prefix="rayrt_bench_cache_"))
    info_start = machine_info()
    from rayrt.convert.convert import convert_plan
    from rayrt.convert.policy import load_conversion_options
    from rayrt.convert.source_match import cached_curves
    from rayrt.machines import get_machine

    cache = Path(args.standard_cache) if args.standard_cache else None
    if cache is not None and cache.is_file():
        import pickle

        si, dvh, t_plan, case = pickle.loads(cache.read_bytes())
        case = {**case, "standard_from_cache": str(cache)}
    else:
        si, res, t_plan, case = plan_case(args.case)
        dvh = res.report["dvh"]
        if cache is not None:
            import pickle

            cache.write_bytes(pickle.dumps((si, dvh, t_plan, case)))
    if args.case == "demo":
        from rayrt.cli.demo import DEFAULT_MACHINES as DEMO_MACHINES, DEMO_CONVERSION

        opts = load_conversion_options(**DEMO_CONVERSION)
        machines = args.machines or DEMO_MACHINES
        case["conversion_options"] = DEMO_CONVERSION
    else:
        opts = load_conversion_options()
        machines = args.machines or DEFAULT_MACHINES
    targets = [get_machine(n.strip()) for n in machines.split(",") if n.strip()]
    t = time.perf_counter()
    for mm in [si.machine, *targets]:
        cached_curves(mm, opts.source.curves)
    t_curves = time.perf_counter() - t

    t = time.perf_counter()
    serial = convert_plan(si, targets, options=opts, workers=1)
    t_serial = time.perf_counter() - t
    if args.no_pool:
        parallel, t_parallel = serial, float("nan")
    else:
        t = time.perf_counter()
        parallel = convert_plan(si, targets, options=opts, workers=args.workers)
        t_parallel = time.perf_counter() - t

    rows, per_machine = [], []
    for a, b in zip(serial, parallel):
        last = a.attempts[-1] if a.attempts else None
        per_machine.append({
            "machine": a.machine, "verdict": a.coincidence.verdict if a.coincidence else None, "status": a.status, "mode": a.mode,
            "attempts": len(a.attempts), "seconds_serial": a.seconds, "seconds_in_pool": b.seconds, "status_in_pool": b.status,
            "gamma_vs_standard_pct": last.gamma_vs_standard_pct if last else None,
            "dvh": last.dvh if last else None, "reasons": a.reasons[:3],
            "attempt_log": [{"attempt": r.attempt, "mode": r.mode, "strength": r.strength, "released": r.released, "verdict": r.verdict,
                             "gamma_vs_standard_pct": r.gamma_vs_standard_pct, "seconds": r.seconds, "mu_per_fraction": r.total_mu_per_fraction,
                             "segments": r.num_segments, "reasons": r.reasons, "dvh": r.dvh} for r in a.attempts],
        })
        for r in a.attempts:
            print(f"  {a.machine} attempt {r.attempt} {r.mode} x{r.strength:g}: {r.verdict}{' RELEASED' if r.released else ''}, gamma "
                  f"{r.gamma_vs_standard_pct}, {r.total_mu_per_fraction:.0f} MU/fx, {r.num_segments} segments, {r.seconds:.1f} s")
            for why in r.reasons:
                print(f"      - {why}")
        rows.append([a.machine, a.coincidence.verdict if a.coincidence else "-", a.mode or "-", len(a.attempts), a.status,
                     f"{last.gamma_vs_standard_pct:.1f}" if last and last.gamma_vs_standard_pct is not None else "-",
                     f"{a.seconds:.1f}", f"{b.seconds:.1f}"])
    print_table(["machine", "coincidence", "mode", "attempts", "status", "gamma %", "s (serial)", "s (in pool)"], rows,
                title=f"{args.case}: standard plan {t_plan:.1f} s; curves (cold cache) {t_curves:.1f} s; "
                      f"{len(targets)} conversions serial {t_serial:.1f} s, pool of {args.workers} {t_parallel:.1f} s "
                      f"(speed-up {t_serial / max(t_parallel, 1e-9):.2f}x)")
    gamma = run_gamma_bench(args.gamma, args.no_pymedphys)
    out = {
        "benchmark": "convert",
        "case": case,
        "standard_plan_seconds": t_plan,
        "standard_dvh": dvh,
        "curves_cold_seconds": t_curves,
        "targets": [m.name for m in targets],
        "serial_seconds": t_serial,
        "parallel_seconds": t_parallel,
        "parallel_workers": args.workers,
        "parallel_backend": "concurrent.futures.ProcessPoolExecutor (spawn, 1 numba thread per worker)",
        "speedup": None if args.no_pool else t_serial / max(t_parallel, 1e-9),
        "per_machine": per_machine,
        "gamma_benchmark": gamma,
        "machine_start": info_start,
        "machine_end": machine_info(),
        "note": "timed on the shared 2-core developer machine under load from other developers; rerun on a quiet machine",
    }
    if args.baseline:
        out["baseline"] = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
