"""Helpers of the fault-tolerance and queue tests (imported by the test modules, not by Ray).

The slow test stages live in :data:`STAGES_FILE` (``tests/helpers/faults_stages.py``); a private
scheduler or service imports them in its computers through ``settings.stage_modules``.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from helpers.paths import REPO

STAGES_FILE = str(Path(__file__).resolve().parent / "faults_stages.py")
FAULT_STAGES = ("fault_mark", "fault_slow")


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            last = pred()
        except Exception as exc:  # e.g. a server that is not up yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


def stage_of(job: dict, name: str) -> dict | None:
    return next((s for s in job.get("stages", []) if s["name"] == name), None)


def mid_slow_stage(job: dict, min_left: int = 5) -> dict | None:
    """The job (as JSON) once ``fault_mark`` has finished and ``fault_slow`` is running with at
    least one of its tasks done and at least ``min_left`` still to do (seconds of work left for
    the test to act in the middle of the stage); else None."""
    mark, slow = stage_of(job, "fault_mark"), stage_of(job, "fault_slow")
    if job.get("state") != "running" or not mark or not slow:
        return None
    if (
        mark["state"] == "succeeded"
        and slow["state"] == "running"
        and 1 <= slow["tasks_done"] <= slow["tasks_total"] - min_left
    ):
        return job
    return None


def snapshot_stage_files(data_dir: str | Path, job_id: str, stages: list[str]) -> dict[str, tuple[bytes, int]]:
    """(bytes, mtime in ns) of every stored result file of ``stages``: equal later = not rewritten."""
    out = {}
    base = Path(data_dir) / "jobs" / job_id / "stages"
    for st in stages:
        for p in sorted((base / st).rglob("*")):
            if p.is_file():
                out[p.relative_to(base).as_posix()] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def stored_files(data_dir: str | Path, job_id: str) -> list[str]:
    """Every file under the job's folder (temporary files included), relative to it."""
    base = Path(data_dir) / "jobs" / job_id
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def expected_result_files(with_dose: bool = True) -> set[str]:
    files = {"structures/result.json", "structures/structures.csv", "fault_mark/result.json", "fault_slow/result.json"}
    if with_dose:
        files |= {"dvh/result.json", "dvh/dvh.csv"}
    return files


# ---------------------------------------------------------------------------- a private Serve app
def deploy_private_app(settings, prefix: str) -> str:
    """Deploy another rayrt ingress (bound to ``settings``' own scheduler) on the running Serve
    under ``/<prefix>``; returns the app name. Undo with :func:`delete_private_app`. It runs with
    authentication off (a loopback bind): it shares the session service's host and port, and the
    tests that use it are about scheduling, not sign-in (tests/service/test_auth.py is)."""
    from ray import serve

    from rayrt.service.app import build_app

    name = f"{prefix}-app"
    serve.run(build_app(settings.model_copy(update={"auth": False})), name=name, route_prefix=f"/{prefix}")
    return name


def delete_private_app(name: str, settings) -> None:
    from rayrt.service import runtime

    runtime.stop(settings, shutdown_serve=False, app_name=name)


# ---------------------------------------------------------------------------- a service in a subprocess
class ServiceProcess:
    """``rayrt serve`` in its own process group with its own Ray (short RAY_TMPDIR), so a test
    can SIGKILL the whole service (driver, Ray processes, workers) without touching its own Ray."""

    def __init__(self, data_dir: Path, port: int, config: Path, log_path: Path, tls_ca: Path | None = None):
        self.data_dir, self.port, self.config, self.log_path = data_dir, port, config, log_path
        self.ray_tmp = Path("/tmp") / f"rs{uuid.uuid4().hex[:6]}"
        self.ray_tmp.mkdir()
        self.proc: subprocess.Popen | None = None
        self._log_start = 0
        #: the certificate to trust when the config serves HTTPS (tls_certfile), else None
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(
            RAY_TMPDIR=str(self.ray_tmp),
            RAY_AUTH_MODE="token",
            RAY_USAGE_STATS_ENABLED="0",
            RAYRT_CONFIG=str(self.config),
        )
        env.pop("RAYRT_DATA_DIR", None)
        exe = Path(sys.executable).with_name("rayrt")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from rayrt.cli import main; main()"]
        cmd += ["serve", "--port", str(self.port), "--data", str(self.data_dir)]
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rayrt serve exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:  # this start's driver says it serves (a killed service's proxy may still answer for a moment)
                started = b"rayrt serving on" in self.log_path.read_bytes()[self._log_start :]
                if started and httpx.get(f"{self.url}/health", timeout=5, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rayrt serve on port {self.port} not healthy after {timeout_s} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _own_pids(self) -> list[int]:
        """Processes of this service: its process group, or anything naming its Ray temp dir."""
        pids = []
        pgid = self.proc.pid if self.proc is not None else None
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if pgid is not None and os.getpgid(int(d.name)) == pgid:
                    pids.append(int(d.name))
                    continue
                if str(self.ray_tmp) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    def kill(self, timeout_s: float = 60.0) -> int:
        """SIGKILL the service's process group (and any straggler of its Ray); returns how many
        stragglers outside the group had to be killed. Never runs ``ray stop``."""
        if self.proc is None:
            return 0
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        stragglers = 0
        deadline = time.monotonic() + timeout_s
        while True:
            pids = [p for p in self._own_pids() if p != self.proc.pid]
            if not pids:
                break
            if time.monotonic() > deadline:
                for p in pids:  # processes of the service this test started
                    try:
                        os.kill(p, signal.SIGKILL)
                        stragglers += 1
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.5)
        self.proc = None
        return stragglers

    def cleanup(self) -> None:
        import shutil

        self.kill(timeout_s=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
