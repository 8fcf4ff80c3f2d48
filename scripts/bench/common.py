"""Shared helpers of the side-by-side benchmarks in scripts/bench/.

Stdlib only at import time, so that the *separate* benchmark venv (.venv-bench, pyRadPlan) can
import it as well as rayrt's own venv:

* :func:`peak_rss_mib` — this process's peak resident set size (``VmHWM`` from
  ``/proc/self/status``, else ``ru_maxrss``), in MiB;
* :func:`run_measured` — run a command in a subprocess and return its exit code, wall time,
  stdout/stderr and the *child's own* peak RSS (``os.wait4`` rusage ``ru_maxrss``, which Linux
  reports in KiB), so every engine is measured in its own process;
* :func:`print_table` — a plain fixed-width table on stdout;
* :func:`write_json` — pretty JSON (creating folders), numbers rounded for humans;
* :func:`machine_info` — host facts to store with every result (cores, load average, python);
* :func:`shared_data_dir` — ``../shared/data`` next to the repo root, or ``$RAYRT_SHARED/data``.

Timings taken while other developers use the same 2-core machine are *under load*: results
record the 1-minute load average at start and end so a reader can judge them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"  # gitignored: large intermediate files (Dij .npz ...)
BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"


def shared_data_dir() -> Path | None:
    """The shared read-only data folder (phantoms, machines), or None when absent."""
    env = os.environ.get("RAYRT_SHARED")
    candidates = [Path(env) / "data"] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of *this* process so far, in MiB (VmHWM; ru_maxrss as fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` now, in MiB (VmRSS); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class Measured:
    """Outcome of :func:`run_measured`."""

    __slots__ = ("returncode", "wall_s", "peak_rss_mib", "stdout", "stderr")

    def __init__(self, returncode: int, wall_s: float, peak_rss_mib: float, stdout: str, stderr: str):
        self.returncode = returncode
        self.wall_s = wall_s
        self.peak_rss_mib = peak_rss_mib
        self.stdout = stdout
        self.stderr = stderr


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
) -> Measured:
    """Run ``cmd`` in its own process; return exit code, wall time and the child's peak RSS (MiB).

    The peak RSS is the child's own ``ru_maxrss`` from ``os.wait4`` (not RUSAGE_CHILDREN, which
    would be the maximum over every child this process ever waited for). Output is captured in
    temporary files so that a chatty child cannot block on a full pipe.
    """
    import tempfile

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=full_env, cwd=cwd)
        deadline = None if timeout_s is None else t0 + timeout_s
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, wall, rusage.ru_maxrss / 1024.0, out.read(), err.read())


def machine_info() -> dict[str, Any]:
    """Facts about the host to store next to timings."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": sys.version.split()[0],
        "load_avg_1min": round(load1, 2),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _round(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    return obj


def write_json(path: str | Path, data: Any, *, digits: int = 6) -> Path:
    """Write ``data`` as indented JSON (floats to ``digits`` significant digits); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_round(data, digits), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fmt(v: Any) -> str:
    """Human formatting for a table cell."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None, file=None) -> None:
    """Print a fixed-width table (first column left-aligned, others right-aligned)."""
    file = file or sys.stdout
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if title:
        print(title, file=file)

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(vals))

    print(line(headers), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print(line(r), file=file)


def zip_folder(folder: Path) -> bytes:
    """A folder's files as the bytes of a zip (paths relative to the folder): one upload."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()
