"""Helpers shared by the cluster scenario scripts (run as subprocesses by the tests).

Each scenario is a standalone script: it starts its own Ray cluster, prints one JSON line
(prefixed ``RESULT ``) with what it observed, and stops exactly the processes it started
(never ``ray stop``: other people's Ray processes on this machine must survive).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise ValueError("scenario printed no RESULT line")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _uses_dir(pid: int, folder: str) -> bool:
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith(folder):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def cluster_pids(gcs_port: int, temp_dir: str | None = None) -> list[int]:
    """PIDs of every live process of the Ray cluster whose GCS listens on ``gcs_port``.

    Raylets, workers, monitors and agents carry ``--gcs-address=<ip>:<port>`` on their command
    line; the GCS server carries ``--gcs_server_port``. Agents that rename themselves
    (``ray::DashboardAgent``) are found by their open files under ``temp_dir`` (the cluster's
    own ``--temp-dir``). Port and folder were created by us, so only our cluster matches.
    """
    me = os.getpid()
    keys = (f":{gcs_port} ", f"--gcs_server_port={gcs_port} ", f"--port={gcs_port} ")
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if "zombie" in _status(pid):
            continue
        cmd = _cmdline(pid) + " "
        if ("ray" in cmd or "gcs_server" in cmd or "raylet" in cmd) and any(k in cmd for k in keys):
            out.append(pid)
        elif temp_dir and cmd.startswith("ray::") and _uses_dir(pid, temp_dir):
            out.append(pid)
    return out


def stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each PID, wait, then SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace_s
    alive = list(pids)
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and "zombie" not in _status(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _status(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return ""


def demo_machine(name: str, boundaries_mm: np.ndarray, jaw_x: bool = True):
    """A valid MachineModel for scenario runs (6 MV SVD pencil-beam parameters; coarse tails)."""
    from rayrt.domain.beam_model import BeamModel
    from rayrt.domain.machine import JawModel, MachineModel, MLCModel

    r_mm = [0.5, 2.0, 10.0, 50.0]
    beam = BeamModel(
        attenuation_per_mm=0.005066,
        betas_per_mm=(0.3252, 0.016, 0.0051),
        kernel_point_weights=(0.5, 0.1, 0.05),
        kernel_radii_mm=r_mm,
        kernels_per_mm2=tuple(
            [float(a * np.exp(-r / s)) for r in r_mm] for a, s in ((0.05, 1.0), (0.002, 10.0), (1e-4, 40.0))
        ),
        primary_fluence_radius_mm=[0.0, 100.0, 200.0],
        primary_fluence=[1.0, 1.03, 1.05],
        source_sigma_mm=2.0,
        head_scatter_field_mm=[40.0, 100.0, 400.0],
        head_scatter=[0.95, 1.0, 1.05],
    )
    return MachineModel(
        name=name,
        nominal_energy_mv=6,
        beam=beam,
        mlc=MLCModel(name=name + "-mlc", leaf_boundaries_mm=list(map(float, boundaries_mm)), interdigitation=True),
        jaw_x=JawModel(min_mm=-200, max_mm=200) if jaw_x else None,
        jaw_y=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMY"),
    )


MILLENNIUM_MM = np.concatenate([np.arange(-200, -100, 10), np.arange(-100, 100, 5), np.arange(100, 201, 10)]).astype(
    float
)
AGILITY_MM = np.arange(-200, 201, 5).astype(float)


def demo_plan(n_beams: int = 2, n_segments: int = 3):
    from rayrt.domain.plan import Beam, Plan, Segment

    c = 0.5 * (MILLENNIUM_MM[:-1] + MILLENNIUM_MM[1:])
    beams = []
    for b in range(n_beams):
        segs = []
        for s in range(n_segments):
            half = np.sqrt(np.clip((20.0 + 8 * s) ** 2 - c**2, 0, None))
            segs.append(Segment(x1_mm=(-half).tolist(), x2_mm=half.tolist(), mu=10.0 + s))
        beams.append(Beam(name=f"B{b}", number=b + 1, gantry_deg=72.0 * b, isocenter_mm=(0.0, 0.0, 0.0), segments=segs))
    return Plan(machine="Standard", patient_id="p1", beams=beams)
