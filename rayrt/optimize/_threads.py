"""Threading around the optimiser's kernels.

* BLAS: scipy's L-BFGS-B runs its small dense updates on one BLAS thread. Measured (2-core
  machine under load): setulb took ~8 ms per call with the default OpenBLAS thread pool and
  ~0.1 ms with one thread for 640 variables; the sparse products use their own numba threads, so
  limiting BLAS costs nothing.
* OpenMP: numba's parallel products run on its OpenMP threading layer, whose workers (GNU libgomp
  default) keep spinning after every parallel region and so take CPU from the thread that runs
  the rest of the evaluation whenever the cores are shared (several Ray workers or users per
  node). ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import rayrt``, unless already set, so it is in
  place before any kernel starts OpenMP) makes them sleep instead:
  measured on the shared 2-core machine (load average ~4), the setup-A fluence optimisation took
  2.7 s wall / 1.6 s CPU with it against 6-7.5 s wall / 3.3-4.1 s CPU with spinning workers.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba

__all__ = ["single_blas_thread", "set_threads"]


@contextmanager
def single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def set_threads(n: int) -> None:
    """numba threads of this process for the next kernels (n <= 0: leave as is)."""
    if n > 0:
        # numba.config sets NUMBA_NUM_THREADS at import time (from the environment): not visible to type checkers
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
