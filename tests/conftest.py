"""Shared fixtures: one real local Ray per test session, the rayrt service on it, small studies.

* ``ray_session`` (session): ``ray.init(address="local", num_cpus=2, include_dashboard=False,
  object_store_memory=256 MiB)`` with a short ``RAY_TMPDIR``; started once, shut down at the end.
  Tests that use it are marked ``@pytest.mark.ray``.
* ``serve_settings`` / ``serve_app`` (session): the rayrt service (Serve ingress, scheduler, one
  ControlledComputer) on a free port with its own store folder; ``serve_app`` is the base URL
  (``http://127.0.0.1:<port>``), ``serve_settings.data_dir`` the store.
* ``small_study`` / ``small_study_dir`` / ``small_study_zip`` (session): a 12 x 32 x 32 synthetic CT
  (4 x 4 x 5 mm) with BODY, PTV, Core and one RTDOSE, in memory / as DICOM files / as a zip.
* ``fast_planning`` (session): a copy of helpers.planning.FAST_PLANNING, the one set of fast
  planning settings every planning test uses.

Shared non-fixture code lives in the ``helpers`` package (tests/helpers/, importable because this
rootdir conftest puts tests/ on sys.path): ``helpers.paths`` (REPO, SHARED), ``helpers.study``,
``helpers.service``, ``helpers.planning``, ``helpers.machines``, ``helpers.dicom``, ``helpers.dose``,
``helpers.faults``.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest
from helpers.http import http

os.environ.setdefault("RAY_AUTH_MODE", "token")
# the client token file of this session (rayrt.service.credentials): each service the tests start
# keeps its admin token here, never in the user's home; helpers.http signs in with it
os.environ["RAYRT_TOKEN_FILE"] = os.path.join(tempfile.mkdtemp(prefix="rayrt-client-"), "tokens.json")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayrt.service.process import ensure_ray_token  # noqa: E402  (after the environment above)

ensure_ray_token()  # the Ray token every Ray the tests start (in this process or a subprocess) authenticates with


# ---------------------------------------------------------------------------- Ray + service
@pytest.fixture(scope="session")
def fast_planning() -> dict:
    """The fast planning overrides every planning test uses (helpers.planning.FAST_PLANNING; a
    copy: spread it into a new mapping rather than changing it)."""
    import copy

    from helpers.planning import FAST_PLANNING

    return copy.deepcopy(FAST_PLANNING)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole test session (never attaches to another cluster)."""
    import ray

    started = False
    if not ray.is_initialized():
        from rayrt.service.process import ray_env_defaults

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
    from rayrt.service.process import free_port
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
            if http.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rayrt service at {url} did not answer /health")
        time.sleep(0.2)
    yield url
    runtime.stop(serve_settings, shutdown_serve=False)


# ---------------------------------------------------------------------------- small studies
@pytest.fixture(scope="session")
def small_study():
    from helpers.study import make_small_study

    return make_small_study()


@pytest.fixture(scope="session")
def small_study_dir(tmp_path_factory, small_study):
    """The small study written as DICOM: CT/ (12 slices), RS.dcm, RD_1.dcm."""
    from rayrt.imaging.export import write_study

    d = tmp_path_factory.mktemp("small-study")
    write_study(small_study, d)
    return d


@pytest.fixture(scope="session")
def small_study_zip(tmp_path_factory, small_study_dir):
    from helpers.study import zip_dir

    return zip_dir(small_study_dir, tmp_path_factory.mktemp("small-zip") / "study.zip")


@pytest.fixture
def small_order() -> dict:
    import copy

    from helpers.study import SMALL_ORDER

    return copy.deepcopy(SMALL_ORDER)


# ---------------------------------------------------------------------------- a planned job
@pytest.fixture(scope="session")
def planned_job(serve_app, small_study_zip, fast_planning):
    """One small planning job (the small study, its order, fast settings) for TrueBeam M120 and the
    standard machine's twin, finished on the session's service: shared by every test that reads a
    job's plans (downloads, viewer, report, reviews) so that the suite plans it once. With the fast
    settings the M120 conversion fails QA (not released) and the twin reuses the standard plan
    (released): both paths are there to test."""
    import copy

    from helpers.service import wait_job
    from helpers.study import SMALL_ORDER

    from rayrt.cli.service import _client, upload_patient

    with _client(serve_app) as c:
        pid = upload_patient(c, small_study_zip)["id"]
        job = c.post(
            "/jobs",
            json={
                "patient_id": pid,
                "order": copy.deepcopy(SMALL_ORDER),
                "machines": ["truebeam_m120", "standard_twin"],
                "options": fast_planning,
            },
        ).json()
    done = wait_job(serve_app, job["id"], timeout_s=600)
    assert done["state"] == "succeeded", done
    return done
