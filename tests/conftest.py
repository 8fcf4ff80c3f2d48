"""Shared fixtures: one real local Ray per test session, the rayrt service on it, small studies.

* ``ray_session`` (session): ``ray.init(address="local", num_cpus=2, include_dashboard=False,
  object_store_memory=256 MiB)`` with a short ``RAY_TMPDIR``; started once, shut down at the end.
  Tests that use it are marked ``@pytest.mark.ray``.
* ``serve_settings`` / ``serve_app`` (session): the rayrt service (Serve ingress, scheduler, one
  ControlledComputer) on a free port with its own store folder; ``serve_app`` is the base URL
  (``http://127.0.0.1:<port>``), ``serve_settings.data_dir`` the store.
* ``small_study`` / ``small_study_dir`` / ``small_study_zip`` (session): a 12 x 32 x 32 synthetic CT
  (4 x 4 x 5 mm) with BODY, PTV, Core and one RTDOSE, in memory / as DICOM files / as a zip.
* ``SHARED``: ../shared (or $RAYRT_SHARED); tests using it skip when it is absent.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED = Path(os.environ.get("RAYRT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")


# ---------------------------------------------------------------------------- Ray + service
@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole test session (never attaches to another cluster)."""
    import ray

    started = False
    if not ray.is_initialized():
        from rayrt.service.runtime import ray_env_defaults

        ray_env_defaults()  # the product's Ray/Serve environment (e.g. Serve's gRPC proxy path)
        tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Unix socket paths <= 107 bytes
        os.environ["RAY_TMPDIR"] = tmp
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 2**20,
            _temp_dir=tmp,
            log_to_driver=False,
        )
        started = True
    yield ray
    if started:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_settings(tmp_path_factory):
    from rayrt.service.runtime import free_port
    from rayrt.service.settings import ServiceSettings

    return ServiceSettings(
        data_dir=str(tmp_path_factory.mktemp("rayrt-data")),
        host="127.0.0.1",
        port=free_port(),
        controlled_computers=1,
        controlled_computer_cpus=1.0,
        progress_interval_s=0.1,
    )


@pytest.fixture(scope="session")
def serve_app(ray_session, serve_settings):
    """Base URL of the rayrt service running on the session's Ray."""
    import httpx

    from rayrt.service import runtime

    url = runtime.start(serve_settings)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rayrt service at {url} did not answer /health")
        time.sleep(0.2)
    yield url
    runtime.stop(serve_settings, shutdown_serve=False)


def wait_job(url: str, job_id: str, timeout_s: float = 120.0) -> dict:
    """Poll ``GET /jobs/{id}`` until the job has finished; returns its JSON."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s} s: {job}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------- small studies
def make_small_study(with_dose: bool = True):
    """A synthetic study: water cylinder (BODY) with a PTV and a 'Core' organ, optional dose (Gy)."""
    from rayrt.domain.patient import Structure, StructureKind
    from rayrt.imaging.study import Study, StructureMask
    from rayrt.imaging.volume import Grid, Volume

    g = Grid(shape=(12, 32, 32), spacing_mm=(4.0, 4.0, 5.0), origin_mm=(-62.0, -62.0, -27.5))
    c = g.voxel_centers_mm()
    r = np.hypot(c[..., 0], c[..., 1])
    body = r < 55
    ptv = (np.hypot(c[..., 0] - 10, c[..., 1]) < 15) & (np.abs(c[..., 2]) < 15)
    core = (np.hypot(c[..., 0] + 15, c[..., 1]) < 8) & (np.abs(c[..., 2]) < 20)
    ct = Volume(np.where(body, 0, -1000).astype(np.int16), g, "HU", {"modality": "CT"})
    doses = []
    if with_dose:
        d = 50.0 * np.exp(-((c[..., 0] - 10) ** 2 + c[..., 1] ** 2) / 800.0)
        doses.append(Volume(d.astype(np.float32), g, "dose_gy", {}))
    return Study(
        patient_id="RT-TEST-1",
        patient_name="Test^Small",
        study_instance_uid=None,
        frame_of_reference_uid=None,
        series=[],
        images={"ct": ct},
        primary_uid="ct",
        structures=[
            StructureMask(Structure(name="BODY", kind=StructureKind.external), body),
            StructureMask(Structure(name="PTV", kind=StructureKind.target), ptv),
            StructureMask(Structure(name="Core", kind=StructureKind.organ), core),
        ],
        doses=doses,
    )


@pytest.fixture(scope="session")
def small_study():
    return make_small_study()


@pytest.fixture(scope="session")
def small_study_dir(tmp_path_factory, small_study):
    """The small study written as DICOM: CT/ (12 slices), RS.dcm, RD_1.dcm."""
    from rayrt.imaging.export import write_study

    d = tmp_path_factory.mktemp("small-study")
    write_study(small_study, d)
    return d


def zip_dir(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture(scope="session")
def small_study_zip(tmp_path_factory, small_study_dir):
    return zip_dir(small_study_dir, tmp_path_factory.mktemp("small-zip") / "study.zip")


SMALL_ORDER = {
    "name": "small test order",
    "prescription": {"target": "PTV", "total_dose_gy": 50.0, "fractions": 25},
    "objectives": [
        {"structure": "PTV", "kind": "squared_deviation", "dose_gy": 50.0, "priority": 100},
        {"structure": "Core", "kind": "max_dose", "dose_gy": 25.0},
    ],
}


@pytest.fixture
def small_order() -> dict:
    import copy

    return copy.deepcopy(SMALL_ORDER)
