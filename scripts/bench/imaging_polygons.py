"""Benchmark: mask <-> polygon conversion, RTSTRUCT export/import and DVH on a 512 x 512 x 200 grid.

Prints a table and writes scripts/bench/results/imaging_polygons.json. Timings depend on the
machine's load; the first rasterisation includes numba compilation unless cached.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rayrt.imaging.polygons import mask_to_polygons, rasterize_polygons
from rayrt.imaging.volume import Grid


def main() -> None:
    g = Grid(shape=(200, 512, 512), spacing_mm=(0.9766, 0.9766, 2.0), origin_mm=(-250.0, -250.0, -200.0))
    z = g.axis_mm("z")[:, None, None]
    y = g.axis_mm("y")[None, :, None]
    x = g.axis_mm("x")[None, None, :]
    r = np.sqrt(x * x + (y * 1.4) ** 2)
    body = (r < 180) & (np.abs(z) < 180)
    ring = (r < 120) & (r > 60) & (np.abs(z) < 120) & (y < 40)  # a C-shaped ring with a hole
    rows = []

    def timed(label, fn):
        t = time.perf_counter()
        out = fn()
        rows.append({"step": label, "seconds": round(time.perf_counter() - t, 3)})
        return out

    rasterize_polygons([np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0.0]])], g)  # compile / load numba cache
    for name, m in (("body", body), ("ring", ring)):
        polys = timed(f"mask_to_polygons {name} ({int(m.sum())} voxels)", lambda: mask_to_polygons(m, g))
        back = timed(
            f"rasterize_polygons {name} ({len(polys)} polygons, {sum(len(p) for p in polys)} vertices)",
            lambda: rasterize_polygons(polys, g),
        )
        rows.append(
            {"step": f"{name}: voxels differing after round trip", "seconds": None, "value": int((back != m).sum())}
        )

    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.export import write_ct_series, write_rtstruct
    from rayrt.imaging.study import StructureMask, load_study
    from rayrt.imaging.volume import Volume
    from rayrt.qa.dvh import dvh_metrics

    with tempfile.TemporaryDirectory(prefix="rayrt_bench_") as tmp:
        ct = Volume(np.where(body, 0, -1000).astype(np.float32), g, "HU")
        timed(
            "write_ct_series (200 slices)",
            lambda: write_ct_series(ct, Path(tmp) / "ct", patient_id="B", patient_name="Bench"),
        )
        sms = [
            StructureMask(Structure(name="BODY", kind=StructureKind.external), body),
            StructureMask(Structure(name="PTV", kind=StructureKind.target), ring),
        ]
        timed("write_rtstruct (2 ROIs)", lambda: write_rtstruct(sms, ct, Path(tmp) / "RS.dcm"))
        st = timed("load_study (CT + RTSTRUCT)", lambda: load_study(tmp))
        dose = (60.0 * np.exp(-((r / 150.0) ** 2)) * np.ones_like(z)).astype(np.float32)
        timed("dvh_metrics BODY (voxel centre)", lambda: dvh_metrics(dose, st.mask("BODY"), g.voxel_volume_cc, "BODY"))
    width = max(len(r["step"]) for r in rows)
    for r in rows:
        val = r["seconds"] if r["seconds"] is not None else r.get("value")
        print(f"{r['step']:<{width}}  {val}")
    out = Path(__file__).resolve().parent / "results" / "imaging_polygons.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"grid": list(g.shape), "rows": rows, "note": "timed on a shared, loaded 2-core machine"}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
