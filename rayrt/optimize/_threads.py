"""BLAS threading around scipy's L-BFGS-B: its small dense updates run on one BLAS thread.

Measured (2-core machine under load): L-BFGS-B's setulb took ~8 ms per call with the default
OpenBLAS thread pool and ~0.1 ms with one thread for 640 variables; the sparse products use their
own numba threads, so limiting BLAS costs nothing.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
