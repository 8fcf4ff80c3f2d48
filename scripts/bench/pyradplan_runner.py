"""Drive pyRadPlan 0.5.0 (the peer engine) on TG119 for the side-by-side benchmarks.

Runs ONLY in the separate benchmark venv (``bash scripts/bench/setup_pyradplan.sh`` creates
``.venv-bench``); it never imports rayrt, so the two environments stay independent. Each
invocation is one process: the caller (scripts/bench/dose.py, scripts/bench/optimize.py) measures
its peak RSS from outside, and this script also records its own ``VmHWM`` right after the Dij.

Setups (docs REFERENCE.md, "A measured peer on the same phantom"), 6 MV generic machine
(matRad photons_Generic, SVD pencil beam), isocenter at the target centre of mass (pyRadPlan's
default), couch 0:

* A: 5 beams 0, 72, 144, 216, 288 deg, 5 mm bixels, 5 mm dose grid;
* B: 9 beams 0:40:320 deg, 5 mm bixels, 3 mm dose grid.

Subcommands::

    .venv-bench/bin/python scripts/bench/pyradplan_runner.py dij --setup A --out work/pyradplan_A.npz [--json F]
    .venv-bench/bin/python scripts/bench/pyradplan_runner.py optimize --setup A --out F.json [--dij-out F.npz]

``dij`` computes the dose-influence matrix, the dose of a uniform-fluence plan (all bixel weights
1) and writes an .npz (see :func:`save_npz` for the keys) plus a JSON summary (``--json``, default:
the .npz path with .json). ``optimize`` computes the Dij, then runs pyRadPlan's own fluence
optimization (scipy L-BFGS-B, objectives from the .mat file) and writes timings, iterations, the
final objective value, the weights and a few DVH metrics as JSON; ``--dij-out`` also exports the
.npz so that setup B (minutes, GiBs) need run only once.

.npz keys (all arrays; voxel index = numpy C order of the dose cube [z, y, x] = x + nx*(y + ny*z)):

* ``dij_data`` (float32), ``dij_indices`` (int64), ``dij_indptr`` (int64), ``dij_shape`` —
  the CSC matrix (voxels x bixels), dose per unit bixel weight;
* ``dose_grid_dims`` (nx, ny, nz), ``dose_grid_resolution_mm`` (x, y, z), ``dose_grid_origin_mm``
  (LPS centre of voxel [0,0,0]); the same ``ct_grid_*`` for the CT;
* ``beam_num``, ``ray_num``, ``bixel_num`` per Dij column; ``gantry_angles_deg``,
  ``couch_angles_deg``, ``iso_center_mm`` (per beam, LPS), ``bixel_width_mm``,
  ``ray_pos_bev_mm`` (per column: x, y, z in the beam's-eye view at the isocenter plane);
* ``uniform_dose`` (float32, dose grid, C order) = Dij @ ones;
* ``voi_<name>`` — voxel indices of each structure on the dose grid *without* overlap priority,
  ``obj_voxels_<i>`` — the voxel indices pyRadPlan's optimizer uses for objective group i (with
  overlap priorities applied), ``objectives_json`` — a JSON string: a list of
  ``{"group": i, "structure", "type", "priority", "parameters": {...}}``. pyRadPlan's objective is
  sum over objectives of priority * (1/N) * sum over the N voxels of f(dose), f = (d - d_ref)^2
  (SquaredDeviation) or max(d - d_max, 0)^2 (SquaredOverdosing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, peak_rss_mib, write_json  # noqa: E402

SETUPS = {
    "A": {"gantry_angles_deg": [0.0, 72.0, 144.0, 216.0, 288.0], "bixel_width_mm": 5.0, "dose_grid_mm": 5.0},
    "B": {"gantry_angles_deg": [float(a) for a in range(0, 360, 40)], "bixel_width_mm": 5.0, "dose_grid_mm": 3.0},
}


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    # pyRadPlan draws tqdm progress bars on stderr; disable them for clean logs
    try:
        import functools

        import tqdm

        tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
    except Exception:  # pragma: no cover - tqdm missing is fine
        pass


def _load(setup: str):
    import numpy as np
    from pyRadPlan import PhotonPlan, load_tg119

    t0 = time.perf_counter()
    ct, cst = load_tg119()
    t_load = time.perf_counter() - t0
    s = SETUPS[setup]
    n = len(s["gantry_angles_deg"])
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {
        "gantry_angles": list(s["gantry_angles_deg"]),
        "couch_angles": [0.0] * n,
        "bixel_width": float(s["bixel_width_mm"]),
    }
    g = float(s["dose_grid_mm"])
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": g, "y": g, "z": g}}}
    pln.prop_opt = {"solver": "scipy"}
    return ct, cst, pln, t_load, np


def _tg119_sha256() -> str:
    from importlib import resources

    p = resources.files("pyRadPlan.data.phantoms").joinpath("TG119.mat")
    return hashlib.sha256(Path(str(p)).read_bytes()).hexdigest()


def compute_dij(setup: str) -> dict:
    """Load TG119, generate the steering info and compute the Dij; return everything + timings."""
    from pyRadPlan import calc_dose_influence, generate_stf

    ct, cst, pln, t_load, np = _load(setup)
    t0 = time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    t_stf = time.perf_counter() - t0
    t0 = time.perf_counter()
    dij = calc_dose_influence(ct, cst, stf, pln)
    t_dij = time.perf_counter() - t0
    rss_after_dij = peak_rss_mib()
    mat = dij.physical_dose.flat[0]
    return {
        "ct": ct,
        "cst": cst,
        "pln": pln,
        "stf": stf,
        "dij": dij,
        "mat": mat,
        "t_load_s": t_load,
        "t_stf_s": t_stf,
        "t_dij_s": t_dij,
        "peak_rss_after_dij_mib": rss_after_dij,
    }


def _grid_dict(grid) -> dict:
    import numpy as np

    return {
        "dims_xyz": [int(v) for v in grid.dimensions],
        "resolution_mm": [float(grid.resolution[a]) for a in "xyz"],
        "origin_mm": [float(v) for v in np.asarray(grid.origin).ravel()],
    }


def _summary(setup: str, r: dict) -> dict:

    stf, mat, dij = r["stf"], r["mat"], r["dij"]
    iso = [list(map(float, b.iso_center)) for b in stf.beams]
    return {
        "engine": "pyRadPlan",
        "version": _version(),
        "setup": setup,
        "gantry_angles_deg": SETUPS[setup]["gantry_angles_deg"],
        "bixel_width_mm": SETUPS[setup]["bixel_width_mm"],
        "dose_grid": _grid_dict(dij.dose_grid),
        "ct_grid": _grid_dict(dij.ct_grid),
        "iso_center_mm": iso[0],
        "num_bixels": int(mat.shape[1]),
        "num_voxels": int(mat.shape[0]),
        "nnz": int(mat.nnz),
        "time_load_s": r["t_load_s"],
        "time_stf_s": r["t_stf_s"],
        "time_dij_s": r["t_dij_s"],
        "peak_rss_after_dij_mib": r["peak_rss_after_dij_mib"],
        "tg119_sha256": _tg119_sha256(),
        "machine": machine_info(),
        "dose_unit": "Gy per unit bixel weight (pyRadPlan/matRad calibration)",
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pyRadPlan")
    except Exception:
        return "unknown"


def _objective_groups(r: dict) -> tuple[list[dict], list]:
    """Objective description and the voxel indices (dose grid, overlap applied) of each group,
    reproduced the way pyRadPlan's PlanningProblem._initialize builds them."""
    import numpy as np

    ct_d = r["ct"].resample_to_grid(r["dij"].dose_grid)
    cst_o = r["cst"].apply_overlap_priorities().resample_on_new_ct(ct_d)
    desc, idx = [], []
    for voi in cst_o.vois:
        objs = [o for o in (voi.objectives or []) if o is not None]
        if not objs:
            continue
        g = len(idx)
        idx.append(np.asarray(voi.indices_numpy, dtype=np.int64))
        for o in objs:
            params = dict(zip(o.parameter_names, [float(p) for p in o.parameters]))
            desc.append(
                {
                    "group": g,
                    "structure": voi.name,
                    "voi_type": voi.voi_type,
                    "type": type(o).__name__,
                    "priority": float(o.priority),
                    "parameters": params,
                    "num_voxels": int(idx[-1].size),
                }
            )
    return desc, idx


def save_npz(path: Path, setup: str, r: dict) -> dict:
    """Export Dij, geometry, uniform-fluence dose, structures and objectives (see module doc)."""
    import numpy as np

    mat = r["mat"].tocsc()
    dij, stf = r["dij"], r["stf"]
    uniform = np.asarray(mat @ np.ones(mat.shape[1], dtype=np.float32), dtype=np.float32)
    ray_pos = []
    for b in stf.beams:
        for ray in b.rays:
            ray_pos.append(np.asarray(ray.ray_pos_bev, dtype=float))
    ray_pos_arr = np.asarray(ray_pos, dtype=float)
    desc, groups = _objective_groups(r)
    ct_d = r["ct"].resample_to_grid(dij.dose_grid)
    cst_raw = r["cst"].resample_on_new_ct(ct_d)
    arrays = {
        "dij_data": np.asarray(mat.data, dtype=np.float32),
        "dij_indices": np.asarray(mat.indices, dtype=np.int64),
        "dij_indptr": np.asarray(mat.indptr, dtype=np.int64),
        "dij_shape": np.asarray(mat.shape, dtype=np.int64),
        "dose_grid_dims": np.asarray(dij.dose_grid.dimensions, dtype=np.int64),
        "dose_grid_resolution_mm": np.asarray([dij.dose_grid.resolution[a] for a in "xyz"], dtype=float),
        "dose_grid_origin_mm": np.asarray(dij.dose_grid.origin, dtype=float).ravel(),
        "ct_grid_dims": np.asarray(dij.ct_grid.dimensions, dtype=np.int64),
        "ct_grid_resolution_mm": np.asarray([dij.ct_grid.resolution[a] for a in "xyz"], dtype=float),
        "ct_grid_origin_mm": np.asarray(dij.ct_grid.origin, dtype=float).ravel(),
        "beam_num": np.asarray(dij.beam_num, dtype=np.int64),
        "ray_num": np.asarray(dij.ray_num, dtype=np.int64),
        "bixel_num": np.asarray(dij.bixel_num, dtype=np.int64),
        "gantry_angles_deg": np.asarray([b.gantry_angle for b in stf.beams], dtype=float),
        "couch_angles_deg": np.asarray([b.couch_angle for b in stf.beams], dtype=float),
        "iso_center_mm": np.asarray([b.iso_center for b in stf.beams], dtype=float),
        "bixel_width_mm": np.asarray(SETUPS[setup]["bixel_width_mm"]),
        "ray_pos_bev_mm": ray_pos_arr,
        "uniform_dose": uniform,
        "objectives_json": np.asarray(json.dumps(desc)),
    }
    for voi in cst_raw.vois:
        arrays[f"voi_{voi.name}"] = np.asarray(voi.indices_numpy, dtype=np.int64)
    for i, g in enumerate(groups):
        arrays[f"obj_voxels_{i}"] = g
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return {
        "objectives": desc,
        "uniform_dose_max": float(uniform.max()),
        "uniform_dose_target_mean": float(uniform[arrays.get("voi_OuterTarget", np.arange(0))].mean())
        if "voi_OuterTarget" in arrays
        else None,
    }


def _dvh_metrics(dose, idx: dict) -> dict:
    import numpy as np

    out = {}
    for name, ix in idx.items():
        d = np.sort(np.asarray(dose)[ix])[::-1]
        if d.size == 0:
            continue

        def dx(pct: float) -> float:  # lowest dose in the hottest pct % of the volume
            k = max(int(np.ceil(pct / 100.0 * d.size)) - 1, 0)
            return float(d[k])

        out[name] = {"mean_gy": float(d.mean()), "D95_gy": dx(95), "D10_gy": dx(10), "D2_gy": dx(2), "D50_gy": dx(50)}
    return out


def cmd_dij(args: argparse.Namespace) -> int:
    _quiet()
    r = compute_dij(args.setup)
    summary = _summary(args.setup, r)
    out = Path(args.out)
    extra = save_npz(out, args.setup, r)
    summary.update(extra)
    summary["npz"] = str(out)
    summary["peak_rss_end_mib"] = peak_rss_mib()
    jpath = Path(args.json) if args.json else out.with_suffix(".json")
    write_json(jpath, summary)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("setup", "num_bixels", "num_voxels", "nnz", "time_dij_s", "peak_rss_after_dij_mib")
            }
        )
    )
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    _quiet()
    import numpy as np
    from pyRadPlan import fluence_optimization

    r = compute_dij(args.setup)
    summary = _summary(args.setup, r)
    desc, groups = _objective_groups(r)
    opt_info: dict = {}
    t0 = time.perf_counter()
    w = fluence_optimization(r["ct"], r["cst"], r["stf"], r["dij"], r["pln"], opt_info=opt_info)
    t_opt = time.perf_counter() - t0
    w = np.asarray(w, dtype=np.float64)
    dose = r["mat"] @ w
    # the final objective value, evaluated the way pyRadPlan defines it (see module doc)
    fval = 0.0
    for o in desc:
        d = dose[groups[o["group"]]]
        if o["type"] == "SquaredDeviation":
            f = np.mean((d - o["parameters"]["d_ref"]) ** 2)
        elif o["type"] == "SquaredOverdosing":
            f = np.mean(np.clip(d - o["parameters"]["d_max"], 0, None) ** 2)
        elif o["type"] == "SquaredUnderdosing":
            f = np.mean(np.clip(o["parameters"]["d_min"] - d, 0, None) ** 2)
        else:
            f = float("nan")
        fval += o["priority"] * float(f)
    ct_d = r["ct"].resample_to_grid(r["dij"].dose_grid)
    cst_raw = r["cst"].resample_on_new_ct(ct_d)
    raw_idx = {v.name: np.asarray(v.indices_numpy, dtype=np.int64) for v in cst_raw.vois}
    res_info = opt_info.get("result_info") or {}
    summary.update(
        {
            "solver": "scipy L-BFGS-B (pyRadPlan OptimizerSciPy)",
            "time_optimization_s": t_opt,
            "num_iter": opt_info.get("num_iter"),
            "num_objective_evaluations": len(opt_info.get("obj_history") or []) or None,
            "objective_final": fval,
            "objective_history": [float(v) for v in (opt_info.get("obj_history") or [])][:2000],
            "result_info": {k: v for k, v in res_info.items() if isinstance(v, (int, float, str, bool))}
            if isinstance(res_info, dict)
            else str(res_info),
            "objectives": desc,
            "dvh": _dvh_metrics(dose, raw_idx),
            "weights": [float(v) for v in w],
            "peak_rss_end_mib": peak_rss_mib(),
        }
    )
    if args.dij_out:
        # also the Dij export + the same JSON summary `dij` writes (so dose.py --reuse-pyradplan can use it)
        dij_summary = _summary(args.setup, r)
        dij_summary.update(save_npz(Path(args.dij_out), args.setup, r))
        dij_summary["npz"] = str(args.dij_out)
        dij_summary["note"] = "written by `optimize --dij-out`: the Dij ran in the same process as the optimization"
        write_json(Path(args.dij_out).with_suffix(".json"), dij_summary)
        summary["npz"] = str(args.dij_out)
    write_json(args.out, summary)
    print(
        json.dumps(
            {k: summary[k] for k in ("setup", "time_dij_s", "time_optimization_s", "num_iter", "objective_final")}
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("dij", help="compute the Dij, export it (.npz) and a JSON summary")
    a.add_argument("--setup", choices=sorted(SETUPS), required=True)
    a.add_argument("--out", required=True, help="the .npz to write")
    a.add_argument("--json", default=None, help="JSON summary (default: OUT with .json)")
    a.set_defaults(func=cmd_dij)
    o = sub.add_parser("optimize", help="compute the Dij, run pyRadPlan's fluence optimization, write JSON")
    o.add_argument("--setup", choices=sorted(SETUPS), required=True)
    o.add_argument("--out", required=True, help="the JSON to write")
    o.add_argument(
        "--dij-out",
        default=None,
        help="also export the Dij .npz and its JSON summary (.json next to it): saves a second Dij run",
    )
    o.set_defaults(func=cmd_optimize)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
