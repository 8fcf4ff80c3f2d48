"""Benchmark: one standard plan converted to several machines, one after the other; plus the gamma tool vs pymedphys.

Plans the case once on the standard machine with the pipeline's recipe (``rayrt.pipeline.run_recipe``,
load ... normalize), then times :func:`rayrt.convert.convert.convert_for_machine` for each target
machine (default: synergy_mlci2, truebeam_m120, versahd_agility, halcyon) in this process, serially
(the service's per-machine conversion actor pools are measured elsewhere). The
commissioning-curve cache (``$RAYRT_CACHE_DIR``) is warmed before the timing so it measures
conversion only, and its cold cost is reported separately. Finally it runs the gamma benchmark
(scripts/bench/gamma.py, rayrt's gamma vs pymedphys, in a subprocess) and embeds its JSON.

Usage:  .venv/bin/python scripts/bench/convert.py [--case small|tg119|demo] [--machines a,b,c,d]
                                                 [--gamma full|small|none] [--no-pymedphys]
                                                 [--standard-cache FILE.pkl] [--baseline OLD.json] [--out FILE.json]

Cases: ``small`` the TG-119 phantom on a 6 mm CT, 5 beams, 8 mm dose grid, short optimisation;
``tg119`` the phantom at its built-in resolution, 9 beams, 5 mm dose grid; ``demo`` the case of
``rayrt demo`` (the phantom written as DICOM with a 4 mm CT and loaded back, the configured
planning defaults of ``configs/planning.yaml``, the demo's machines). Conversion settings are
``configs/conversion.yaml`` with the request's overrides (``rayrt.pipeline.check_request``).
Writes scripts/bench/results/convert.json (demo: convert_demo.json) and prints a table with every
attempt's QA outcome. Timings on the shared 2-core developer machine are under load from other
developers: the lead reruns them on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, RESULTS_DIR, machine_info, print_table, write_json  # noqa: E402

DEFAULT_MACHINES = "synergy_mlci2,truebeam_m120,versahd_agility,halcyon"


def plan_case(case: str, work: Path) -> tuple[Any, Any, Any, float, dict]:
    """(standard plan, its geometry, the planning request, planning seconds, case description)."""
    from rayrt.domain.planning import PlanningRequest, planning_request
    from rayrt.imaging.phantoms import tg119_order, tg119_phantom, write_tg119
    from rayrt.pipeline import run_recipe

    order = tg119_order()
    if case == "tg119":
        source: Any = tg119_phantom()
        req = PlanningRequest(num_beams=9, dose_grid_mm=5.0, fmo_iterations=200, dao_rounds=3)
        info = {"ct": "built-in resolution"}
    elif case == "demo":  # the demo's case: its DICOM phantom, the configured planning defaults
        source = write_tg119(work / "tg119", 4.0)
        req = planning_request(None, [])
        info = {"ct": "DICOM, 4 mm", "planning": "configs/planning.yaml defaults (as rayrt demo)"}
    else:
        source = tg119_phantom(6.0)
        req = PlanningRequest(
            gantry_deg=[0.0, 72.0, 144.0, 216.0, 288.0],
            dose_grid_mm=8.0,
            fmo_iterations=100,
            dao_rounds=2,
            dao_iterations=30,
        )
        info = {"ct": "6 mm"}
    t = time.perf_counter()
    res = run_recipe(source, order, req, until="normalize")
    t_plan = time.perf_counter() - t
    std = res["standard_plan"]
    info.update(
        {
            "case": case,
            "beams": len(req.angles()),
            "dose_grid_mm": req.dose_grid_mm,
            "standard_mu_per_fraction": std.plan.total_mu,
        }
    )
    return std, res["geometry"], req, t_plan, info


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
    ap.add_argument(
        "--case",
        choices=["small", "tg119", "demo"],
        default="tg119",
        help="demo: the service demo's case and planning defaults, its 3 machines by default",
    )
    ap.add_argument("--machines", default=None)
    ap.add_argument("--gamma", choices=["full", "small", "none"], default="full")
    ap.add_argument("--no-pymedphys", action="store_true")
    ap.add_argument(
        "--out", default=None, help="JSON output (default results/convert.json; --case demo: results/convert_demo.json)"
    )
    ap.add_argument(
        "--standard-cache",
        default=None,
        help="pickle of the standard plan and its geometry: read when "
        "present, else written (iterate on conversions without re-planning; delete it after changing the "
        "planner)",
    )
    ap.add_argument(
        "--baseline", default=None, help="an earlier result JSON of this script to embed as 'baseline' (before/after)"
    )
    args = ap.parse_args()
    if args.out is None:
        args.out = str(RESULTS_DIR / ("convert_demo.json" if args.case == "demo" else "convert.json"))

    os.environ.setdefault("RAYRT_CACHE_DIR", tempfile.mkdtemp(prefix="rayrt_bench_cache_"))
    info_start = machine_info()
    from rayrt.convert.convert import convert_for_machine
    from rayrt.convert.source_match import cached_curves
    from rayrt.machines import get_machine
    from rayrt.pipeline import check_request

    cache = Path(args.standard_cache) if args.standard_cache else None
    if cache is not None and cache.is_file():
        std, geo, req, t_plan, case = pickle.loads(cache.read_bytes())
        case = {**case, "standard_from_cache": str(cache)}
    else:
        with tempfile.TemporaryDirectory(prefix="rayrt-bench-convert-") as d:
            std, geo, req, t_plan, case = plan_case(args.case, Path(d))
        if cache is not None:
            cache.write_bytes(pickle.dumps((std, geo, req, t_plan, case)))
    if args.machines:
        machines = args.machines
    elif args.case == "demo":
        from rayrt.cli.demo import DEFAULT_MACHINES as DEMO_MACHINES

        machines = DEMO_MACHINES
    else:
        machines = DEFAULT_MACHINES
    opts = check_request(req)
    case["conversion_options"] = req.conversion_options
    targets = [get_machine(n.strip()) for n in machines.split(",") if n.strip()]
    t = time.perf_counter()
    for mm in [get_machine(std.plan.machine), *targets]:
        cached_curves(mm, opts.source.curves)
    t_curves = time.perf_counter() - t

    t = time.perf_counter()
    results = [convert_for_machine(std, geo, m, opts) for m in targets]
    t_serial = time.perf_counter() - t

    rows, per_machine = [], []
    for a in results:
        last = a.attempts[-1] if a.attempts else None
        per_machine.append(
            {
                "machine": a.machine,
                "verdict": a.coincidence.verdict if a.coincidence else None,
                "status": a.status,
                "mode": a.mode,
                "attempts": len(a.attempts),
                "seconds": a.seconds,
                "gamma_vs_standard_pct": last.gamma_vs_standard_pct if last else None,
                "dvh": last.model_dump(mode="json")["dvh"] if last else None,
                "reasons": a.reasons[:3],
                "attempt_log": [r.model_dump(mode="json") for r in a.attempts],
            }
        )
        for r in a.attempts:
            released = " RELEASED" if r.released else ""
            print(
                f"  {a.machine} attempt {r.attempt} {r.mode} x{r.strength:g}: {r.verdict}{released}, gamma "
                f"{r.gamma_vs_standard_pct}, {r.total_mu_per_fraction:.0f} MU/fx, {r.num_segments} segments, "
                f"{r.seconds:.1f} s"
            )
            for why in r.reasons:
                print(f"      - {why}")
        gamma = f"{last.gamma_vs_standard_pct:.1f}" if last and last.gamma_vs_standard_pct is not None else "-"
        rows.append(
            [
                a.machine,
                a.coincidence.verdict if a.coincidence else "-",
                a.mode or "-",
                len(a.attempts),
                a.status,
                gamma,
                f"{a.seconds:.1f}",
            ]
        )
    print_table(
        ["machine", "coincidence", "mode", "attempts", "status", "gamma %", "s"],
        rows,
        title=f"{args.case}: standard plan {t_plan:.1f} s; curves (cold cache) {t_curves:.1f} s; "
        f"{len(targets)} conversions one after the other {t_serial:.1f} s",
    )
    gamma = run_gamma_bench(args.gamma, args.no_pymedphys)
    out = {
        "benchmark": "convert",
        "case": case,
        "standard_plan_seconds": t_plan,
        "standard_dvh": std.dvh,
        "curves_cold_seconds": t_curves,
        "targets": [m.name for m in targets],
        "serial_seconds": t_serial,
        "per_machine": per_machine,
        "gamma_benchmark": gamma,
        "machine_start": info_start,
        "machine_end": machine_info(),
        "note": "timed on the shared 2-core developer machine under load from other developers; rerun on a quiet "
        "machine",
    }
    if args.baseline:
        out["baseline"] = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
