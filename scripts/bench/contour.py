"""Benchmark of the delineation tools on a synthetic 512 x 512 x 200 thorax CT (with couch).

Target (issue): automatic External + lungs + bones in under 10 s on the project's 2-core machine.
Prints a table and writes scripts/bench/results/contour.json. Timings are wall-clock seconds,
best of ``--repeat`` runs; the machine may be shared, so say so when quoting them.

    .venv/bin/python scripts/bench/contour.py [--repeat 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="256 x 256 x 100 instead (quick check)")
    args = ap.parse_args()

    from rayrt.contour.automatic import auto_contour, body_ct, bones_ct, lungs_ct
    from rayrt.contour.morphology import Margins, contract, expand
    from rayrt.contour.semiauto import interpolate_slices, region_grow
    from rayrt.contour.synthetic import dice, ellipsoid_mask, thorax_phantom

    shape, spacing = ((100, 256, 256), (1.953, 1.953, 5.0)) if args.small else ((200, 512, 512), (0.977, 0.977, 2.5))
    t0 = time.perf_counter()
    ct, truth = thorax_phantom(shape, spacing, noise_hu=20.0)
    t_phantom = time.perf_counter() - t0
    hu, grid = ct.array, ct.grid

    rows: list[dict] = []

    def record(name: str, best: float, times: list[float], extra: dict | None = None) -> None:
        rows.append({"step": name, "best_s": round(best, 3), "runs_s": [round(t, 3) for t in times], **(extra or {})})

    best, times, res = _best(lambda: auto_contour(ct, "CT", targets=("body", "lungs", "bones")), args.repeat)
    masks = {n: m for n, _, _, m in res}
    record(
        "auto: External + lungs + bones",
        best,
        times,
        {f"dice_{n}": round(dice(masks[n], truth[n]), 4) for n in ("External", "Lung_L", "Lung_R", "Bones")},
    )
    best, times, body = _best(lambda: body_ct(hu, grid), args.repeat)
    record("  External only", best, times, {"couch_voxels_in_external": int((body & truth["Couch"]).sum())})
    best, times, _ = _best(lambda: lungs_ct(hu, grid, body), args.repeat)
    record("  lungs only (given External)", best, times)
    best, times, _ = _best(lambda: bones_ct(hu, grid, body), args.repeat)
    record("  bones only (given External)", best, times)
    best, times, res = _best(lambda: auto_contour(ct, "CT"), 1)
    record("auto: all four (with air cavities)", best, times)

    ctv = ellipsoid_mask(grid, (60.0, -20.0, 0.0), (25.0, 20.0, 30.0))
    expand(ctv, grid, Margins(left_mm=1, right_mm=2))  # compile the numba kernel (cached on disk) outside the timing
    best, times, ptv = _best(lambda: expand(ctv, grid, Margins.isotropic(5.0)), args.repeat)
    record("margin: CTV -> PTV 5 mm isotropic (EDT)", best, times)
    aniso = Margins(left_mm=5, right_mm=5, anterior_mm=7, posterior_mm=7, superior_mm=10, inferior_mm=10)
    best, times, _ = _best(lambda: expand(ctv, grid, aniso), args.repeat)
    record("margin: 5/7/10 mm per axis (EDT)", best, times)
    asym = Margins(left_mm=5, right_mm=8, anterior_mm=7, posterior_mm=4, superior_mm=10, inferior_mm=6)
    best, times, _ = _best(lambda: expand(ctv, grid, asym), args.repeat)
    record("margin: per direction (octant scatter)", best, times)
    best, times, _ = _best(lambda: contract(body, grid, Margins.isotropic(3.0)), 1)
    record("contract External by 3 mm", best, times)
    best, times, grown = _best(lambda: region_grow(ct, (75.0, -25.0, 0.0), (-1000, -400), body=body), args.repeat)
    record("grow: lung from one seed", best, times, {"dice_vs_lung": round(dice(grown, truth["Lung_L"]), 4)})
    keys = np.flatnonzero(ctv.any(axis=(1, 2)))[::4]
    sparse = np.zeros_like(ctv)
    sparse[keys] = ctv[keys]
    best, times, filled = _best(lambda: interpolate_slices(sparse, grid), args.repeat)
    record("interpolate CTV from every 4th slice", best, times, {"dice": round(dice(filled, ctv), 4)})

    print(
        f"synthetic CT {shape[2]} x {shape[1]} x {shape[0]} voxels, spacing {spacing} mm, "
        f"phantom built in {t_phantom:.1f} s"
    )
    print(f"{'step':<42} {'best s':>8}  runs / checks")
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in {"step", "best_s", "runs_s"}}
        print(f"{r['step']:<42} {r['best_s']:>8.3f}  {r['runs_s']} {extra if extra else ''}")
    target = rows[0]["best_s"]
    print(f"target: External + lungs + bones < 10 s -> {'met' if target < 10 else 'NOT met'} ({target:.2f} s)")

    out = {
        "benchmark": "contour",
        "ct_shape_kji": list(shape),
        "spacing_mm": list(spacing),
        "repeat": args.repeat,
        "rows": rows,
        "target_auto_s": 10.0,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "note": "wall clock on a possibly shared machine; rerun on a quiet machine for reference numbers",
    }
    path = Path(__file__).resolve().parent / "results" / ("contour_small.json" if args.small else "contour.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
