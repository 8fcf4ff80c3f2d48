"""Image viewer benchmark (issue 16, "under 100 ms per slice change on a 512 x 512 x 200 CT").

    .venv/bin/python scripts/bench/viewer.py [--steps 60] [--small] [--no-browser] [--out viewer.json]

A synthetic 512 x 512 x 200 thorax CT (rayrt.contour.synthetic.thorax_phantom, 0.977 x 0.977 x
2.5 mm) with External, lungs, bones, a PTV and a cord, and an RTDOSE on a 2.5 mm grid, written as
DICOM (CT + RTSTRUCT + RTDOSE), zipped and uploaded to a fresh local service (Ray + Serve + rayrt,
the way scripts/bench/load.py starts one). Then:

* HTTP: per slice change the one answer the page asks for (``GET /patients/{id}/views/{plane}/{i}``:
  image, masks and dose together) and, on the next ``--steps`` slices, the three separate answers
  (image slice, masks, dose) fetched at once; ``--steps`` consecutive slices in each plane: the time
  until everything has arrived, **cold** (first time each slice is asked for: the service
  resamples, packs and compresses it) and **warm** (asked again: the service's answer cache),
  p50 / p95 / max, and the bytes on the wire; the first answer of the patient (loading the
  volumes) on its own.
* Browser (Debian's chromium through Selenium, skipped when missing): the viewer page of the
  patient, ``--steps`` real mouse-wheel steps in each plane (one slice each; each step waits for
  its drawing), and clicks at random points of the axial view (each moves the coronal and sagittal
  views to slices never shown: no prefetch helps): the page's own ``data-render-ms`` (from the
  request to the drawn canvas) of every change, p50 / p95 / max, and of that the drawing alone
  (``data-draw-ms``: grey levels, dose wash, isodose lines and outlines onto the canvas).

Prints a table and writes scripts/bench/results/viewer.json. Timings on a shared 2-core machine are
under load: the results record the load average.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import service as svc  # noqa: E402  (service start / stop of the service benchmark)
from common import RESULTS_DIR, machine_info, print_table, write_json, zip_folder  # noqa: E402

TARGET_MS = 100.0


def make_case(folder: Path, small: bool) -> dict:
    """The synthetic patient as DICOM in ``folder``; returns its facts."""
    from rayrt.contour.synthetic import ellipsoid_mask, thorax_phantom
    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.export import write_study
    from rayrt.imaging.study import StructureMask, Study
    from rayrt.imaging.volume import Volume

    shape, spacing = ((100, 256, 256), (1.953, 1.953, 5.0)) if small else ((200, 512, 512), (0.977, 0.977, 2.5))
    t = time.perf_counter()
    ct, truth = thorax_phantom(shape, spacing, noise_hu=20.0)
    g = ct.grid
    ptv = ellipsoid_mask(g, (60.0, -20.0, 0.0), (30.0, 25.0, 40.0))
    cord = ellipsoid_mask(g, (0.0, 60.0, 0.0), (6.0, 6.0, 0.45 * g.spacing[2] * g.shape[0]))
    colours = {
        "External": (0, 200, 0),
        "Lung_L": (0, 160, 255),
        "Lung_R": (0, 100, 255),
        "Bones": (230, 230, 200),
        "PTV": (255, 0, 0),
        "Cord": (255, 255, 0),
    }
    masks = {**{n: truth[n] for n in ("External", "Lung_L", "Lung_R", "Bones")}, "PTV": ptv, "Cord": cord}
    kinds = {"External": StructureKind.external, "PTV": StructureKind.target}
    structures = [
        StructureMask(Structure(name=n, kind=kinds.get(n, StructureKind.organ), colour=colours[n]), m)
        for n, m in masks.items()
    ]
    dg = g.with_spacing((2.5, 2.5, 2.5))
    c = dg.voxel_centers_mm()
    r2 = ((c[..., 0] - 60.0) / 45.0) ** 2 + ((c[..., 1] + 20.0) / 40.0) ** 2 + (c[..., 2] / 55.0) ** 2
    dose = 60.0 / (1.0 + r2**3) + 4.0 * np.exp(-np.hypot(c[..., 0] - 60.0, c[..., 1] + 20.0) / 60.0)
    inside = Volume(masks["External"].astype(np.uint8), g).sample(c, order=0) > 0
    dose = np.where(inside, dose, 0.0).astype(np.float32)
    study = Study(
        patient_id="BENCH-VIEWER",
        patient_name="Bench^Viewer",
        study_instance_uid=None,
        frame_of_reference_uid=None,
        series=[],
        images={"ct": ct},
        primary_uid="ct",
        structures=structures,
        doses=[Volume(dose, dg, "dose_gy", {})],
    )
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    write_study(study, folder)
    return {
        "ct_shape_kji": list(shape),
        "spacing_mm": list(spacing),
        "dose_shape_kji": list(dg.shape),
        "structures": list(masks),
        "phantom_s": t_build,
        "dicom_write_s": time.perf_counter() - t,
    }


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=float)
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
    }


def bench_http(url: str, headers: dict, pid: str, info: dict, steps: int) -> dict:
    """Per slice change: the page's one view answer (image + masks + dose), and the three separate
    answers fetched at once, each cold then warm, on two different runs of slices."""
    import httpx

    out: dict = {}
    nbytes: dict[str, list[int]] = {"view": [], "image": [], "masks": [], "dose": []}
    with httpx.Client(base_url=url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=8)) as c:
        pool = ThreadPoolExecutor(3)

        def check(r: httpx.Response, kind: str) -> None:
            if r.status_code != 200:
                raise RuntimeError(f"{r.request.url}: {r.status_code} {r.text[:200]}")
            nbytes[kind].append(int(r.headers.get("content-length", len(r.content))))

        def view(plane: str, i: int) -> float:
            t = time.perf_counter()
            r = c.get(f"/patients/{pid}/views/{plane}/{i}", params={"dose": "upload:0"})
            ms = 1000 * (time.perf_counter() - t)
            check(r, "view")
            return ms

        def separate(plane: str, i: int) -> float:
            paths = {
                "image": f"/patients/{pid}/slices/{plane}/{i}",
                "masks": f"/patients/{pid}/masks/{plane}/{i}",
                "dose": f"/patients/{pid}/doses/0/{plane}/{i}",
            }
            t = time.perf_counter()
            rs = dict(zip(paths, pool.map(lambda p: c.get(p), paths.values())))
            ms = 1000 * (time.perf_counter() - t)
            for k, r in rs.items():
                check(r, k)
            return ms

        t = time.perf_counter()
        out["first_change_ms"] = view("axial", 0)
        for p in info["planes"]:
            start = max(1, p["count"] // 2 - steps)
            runs = {"view": range(start, start + steps), "separate": range(start + steps, start + 2 * steps)}
            res: dict = {"rows": p["rows"], "cols": p["cols"]}
            for how, fn in (("view", view), ("separate", separate)):
                idx = [i for i in runs[how] if i < p["count"]]
                cold = [fn(p["plane"], i) for i in idx]
                warm = [fn(p["plane"], i) for i in idx]
                res[how] = {"cold": _stats(cold), "warm": _stats(warm)}
            out[p["plane"]] = res
        out["seconds"] = time.perf_counter() - t
        pool.shutdown()
    out["bytes_per_answer"] = {k: float(np.mean(v)) for k, v in nbytes.items() if v}
    return out


def bench_browser(url: str, token: str, pid: str, info: dict, steps: int, clicks: int) -> dict:
    from helpers.browser import chrome, have_chromium, sign_in, wait
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not have_chromium():
        return {"skipped": "chromium / chromedriver not installed"}
    driver = chrome(1500, 1000)
    out: dict = {}
    try:
        sign_in(driver, url, token, "bench", page=f"#/patients/{pid}/viewer")
        wait(driver, "canvas.v-canvas[data-plane=axial]", timeout=120)

        def count() -> int:
            return int(driver.execute_script("return document.querySelector('.viewer').dataset.renderCount || '0'"))

        draws: list[float] = []

        def last_ms() -> float:
            ds = driver.execute_script("return Object.assign({}, document.querySelector('.viewer').dataset)")
            draws.append(float(ds.get("drawMs") or "nan"))
            return float(ds["renderMs"])

        WebDriverWait(driver, 180).until(lambda d: count() >= 3)
        out["first_view_ms"] = last_ms()
        time.sleep(1.0)  # let the first prefetches land
        for p in info["planes"]:
            canvas = driver.find_element(By.CSS_SELECTOR, f"canvas.v-canvas[data-plane={p['plane']}]")
            ms = []
            direction = 120 if int(canvas.get_attribute("data-index")) < p["count"] // 2 + 1 else -120
            for _ in range(steps):
                before = count()
                ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, direction).perform()
                WebDriverWait(driver, 30).until(lambda d: count() > before)
                ms.append(last_ms())
            out[f"wheel_{p['plane']}"] = _stats(ms)
        # clicks at random points of the axial view: the coronal and sagittal views jump to new slices
        canvas = driver.find_element(By.CSS_SELECTOR, "canvas.v-canvas[data-plane=axial]")
        rng = random.Random(7)
        w, h = canvas.size["width"], canvas.size["height"]
        ms = []
        for _ in range(clicks):
            before = count()
            dx, dy = rng.randint(-w // 3, w // 3), rng.randint(-h // 3, h // 3)
            ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
            WebDriverWait(driver, 30).until(lambda d: count() >= before + 2)
            ms.append(last_ms())  # the later of the two views: the whole change
        out["click_jump"] = _stats(ms)
        out["drawing_only"] = _stats([d for d in draws if d == d])
        out["screenshot_png_bytes"] = len(driver.get_screenshot_as_png())
    finally:
        driver.quit()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="slice changes per plane")
    ap.add_argument("--clicks", type=int, default=30, help="random clicks in the axial view (browser)")
    ap.add_argument("--small", action="store_true", help="256 x 256 x 100 (a quick check)")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", default="viewer.json")
    args = ap.parse_args()

    import httpx

    load0 = machine_info()
    work = Path(tempfile.mkdtemp(prefix="rayrt-viewer-"))
    case = make_case(work / "case", args.small)
    t = time.perf_counter()
    data = zip_folder(work / "case")
    case["zip_mib"] = len(data) / 2**20
    url, settings, _, _ = svc._start_service(work / "data", computers=1)
    headers = svc._headers(url)
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
            t = time.perf_counter()
            r = c.post("/patients", files=[("files", ("case.zip", data, "application/zip"))])
            if r.status_code != 201:
                raise RuntimeError(f"upload: {r.status_code} {r.text[:300]}")
            case["upload_import_s"] = time.perf_counter() - t
            pid = r.json()["id"]
            # the browser reads a second copy: its slices are as new to the service as the HTTP run's
            r = c.post("/patients", files=[("files", ("case.zip", data, "application/zip"))])
            if r.status_code != 201:
                raise RuntimeError(f"upload: {r.status_code} {r.text[:300]}")
            pid_browser = r.json()["id"]
            t = time.perf_counter()
            info = c.get(f"/patients/{pid}/viewer").json()
            case["first_viewer_json_s"] = time.perf_counter() - t
        http_res = bench_http(url, headers, pid, info, args.steps)
        token = headers["Authorization"].split(" ", 1)[1]
        browser_res = (
            {"skipped": "--no-browser"}
            if args.no_browser
            else bench_browser(url, token, pid_browser, info, args.steps, args.clicks)
        )
    finally:
        svc._stop_service(settings)

    rows = []
    for how, label in (("view", "one answer"), ("separate", "3 answers")):
        for p in ("axial", "coronal", "sagittal"):
            h = http_res[p]
            for kind in ("cold", "warm"):
                s = h[how][kind]
                name = f"HTTP {label}: {p} ({h['rows']} x {h['cols']}) {kind}"
                rows.append([name, s["p50_ms"], s["p95_ms"], s["max_ms"], s["n"]])
    for key in ("wheel_axial", "wheel_coronal", "wheel_sagittal", "click_jump", "drawing_only"):
        s = browser_res.get(key)
        if s:
            rows.append(
                [f"browser {key.replace('_', ' ')} (data-render-ms)", s["p50_ms"], s["p95_ms"], s["max_ms"], s["n"]]
            )
    title = (
        f"viewer: CT {' x '.join(map(str, case['ct_shape_kji'][::-1]))}, {len(case['structures'])} structures, "
        f"dose grid {' x '.join(map(str, case['dose_shape_kji'][::-1]))}; "
        f"per slice change (ms), target < {TARGET_MS:.0f}"
    )
    print_table(["measure", "p50 ms", "p95 ms", "max ms", "n"], rows, title=title)
    print(
        f"first slice change after upload (volumes loaded): {http_res['first_change_ms']:.0f} ms; "
        f"first viewer JSON: {case['first_viewer_json_s'] * 1000:.0f} ms; "
        f"upload + import {case['upload_import_s']:.1f} s; "
        f"bytes per answer: { {k: int(v) for k, v in http_res['bytes_per_answer'].items()} }"
    )
    if "first_view_ms" in browser_res:
        print(f"browser: first view (three planes) {browser_res['first_view_ms']:.0f} ms")
    res = {
        "benchmark": "viewer",
        "target_ms": TARGET_MS,
        "case": case,
        "http": http_res,
        "browser": browser_res,
        "machine_start": load0,
        "machine_end": machine_info(),
        "note": "wall clock on a shared 2-core machine (see load_avg_1min); HTTP = image + masks + dose at once",
    }
    print("wrote", write_json(RESULTS_DIR / args.out, res))


if __name__ == "__main__":
    main()
