"""Fluence regularisation for treatable plans: smoothing and a bound on every beamlet's weight.

A fluence that only minimises dose objectives is jagged: neighbouring beamlets alternate between
zero and several times the open-field level. Sequenced into step-and-shoot segments, such a map
needs many small segments and several times the MU of an open field (issue: 30,000 MU per fraction
on a head-and-neck patient). Two terms keep the fluence deliverable, both in the units of the
weights w (course MU-weights, :mod:`rayrt.optimize.standard`):

* **Smoothing**: ``S(w) = s * Rx^2 * mean_k ((w_a(k) - w_b(k)) / w_open)^2`` over every pair k of
  neighbouring beamlets of one beam (along the leaf-travel direction and across leaf pairs), with
  ``w_open`` the open-field weight (the uniform weight whose mean target dose is the prescription
  ``Rx``). Scaled by ``Rx^2`` it is commensurate with the dose objectives (mean squared Gy): a
  relative jump of 100 % between neighbours costs as much as ``sqrt(s) * Rx`` Gy of RMS dose error.
* **Weight bound**: ``0 <= w_j <= max_factor * w_open`` (a box constraint for L-BFGS-B). With a
  unidirectional sweep the MU of a beam is at most the largest sum of rising steps along a row; the
  bound and the smoothing together keep the total MU within a few times the open-field MU.

The open-field MU (per fraction) of a plan is ``num_beams * w_open / fractions`` (one open segment
per beam covering its beamlet grid): the reference of the "MU / open-field MU" modulation measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rayrt.optimize.layout import BeamletLayout

__all__ = ["FluenceRegularizer", "neighbour_differences", "SweepMU", "sweep_mu_operator"]


def neighbour_differences(layouts: list[BeamletLayout], slices: list[slice], num_beamlets: int) -> sp.csr_matrix:
    """Sparse operator ``D`` (pairs x beamlets): ``(D w)_k = w_a - w_b`` for every pair of beamlets
    of one beam that share an edge in the beam's eye view (same row and adjacent columns, or the
    same column in adjacent rows)."""
    rows_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    for lay, sl in zip(layouts, slices):
        idx = lay.beamlet_index
        for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])):
            ok = (a >= 0) & (b >= 0)
            rows_a.append(a[ok] + sl.start)
            rows_b.append(b[ok] + sl.start)
    ia = np.concatenate(rows_a) if rows_a else np.zeros(0, np.int64)
    ib = np.concatenate(rows_b) if rows_b else np.zeros(0, np.int64)
    k = np.arange(ia.size)
    data = np.concatenate([np.ones(ia.size), -np.ones(ib.size)])
    return sp.csr_matrix((data, (np.concatenate([k, k]), np.concatenate([ia, ib]))), shape=(ia.size, num_beamlets))


@dataclass
class SweepMU:
    """A smooth estimate of the MU a unidirectional sweep needs to deliver a fluence.

    For one leaf pair (a row of beamlets) the sweep's MU is the sum of the rising steps along the
    leaf-travel direction, ``sum_c (w_c - w_{c-1})_+`` with ``w`` = 0 outside the row; for a beam it
    is the largest over its rows. Smoothed: ``(x)_+ ~ (x + sqrt(x^2 + eps^2)) / 2`` and the maximum
    over rows by a p-norm (p = 128: at most n_rows^(1/128), i.e. 2.4 % for 20 equal rows, above the
    maximum), so the estimate is differentiable.
    ``steps`` (steps x beamlets) gives every rising-step candidate ``x``; ``rows`` (rows x steps)
    sums them per row; ``beam_of_row`` the beam of each row."""

    steps: sp.csr_matrix
    rows: sp.csr_matrix
    beam_of_row: np.ndarray
    num_beams: int
    p: float = 128.0

    def value_and_grad(self, w: np.ndarray, eps: float) -> tuple[float, np.ndarray]:
        """Estimated total sweep MU (units of w) and its gradient."""
        x = self.steps @ w
        r = np.maximum(np.sqrt(x * x + eps * eps), 1e-300)
        pos = 0.5 * (x + r)
        tv = self.rows @ pos  # per row
        total = 0.0
        dtv = np.zeros_like(tv)
        for b in range(self.num_beams):
            sel = self.beam_of_row == b
            t = tv[sel]
            if t.size == 0:
                continue
            scale = max(float(t.max()), 1e-30)
            q = t / scale
            norm = float(np.sum(q**self.p)) ** (1.0 / self.p)
            total += scale * norm
            dtv[sel] = (q / norm) ** (self.p - 1.0)
        dpos = self.rows.T @ dtv
        dx = dpos * 0.5 * (1.0 + x / r)
        return total, self.steps.T @ dx


def sweep_mu_operator(layouts: list[BeamletLayout], slices: list[slice], num_beamlets: int) -> SweepMU:
    """The :class:`SweepMU` of beams with these beamlet layouts (rows = leaf pairs' beamlet rows)."""
    step_cols: list[np.ndarray] = []
    prev_cols: list[np.ndarray] = []
    step_row: list[np.ndarray] = []
    beam_of_row: list[np.ndarray] = []
    n_rows = 0
    for b, (lay, sl) in enumerate(zip(layouts, slices)):
        idx = lay.beamlet_index
        idx = idx[(idx >= 0).any(axis=1)]  # rows with at least one beamlet
        prev = np.concatenate([np.full((idx.shape[0], 1), -1), idx[:, :-1]], axis=1)
        ok = idx >= 0
        r, _ = np.nonzero(ok)
        step_cols.append(idx[ok] + sl.start)
        prev_cols.append(np.where(prev[ok] >= 0, prev[ok] + sl.start, -1))
        step_row.append(r + n_rows)
        beam_of_row.append(np.full(idx.shape[0], b))
        n_rows += idx.shape[0]
    cols = np.concatenate(step_cols) if step_cols else np.zeros(0, np.int64)
    prevs = np.concatenate(prev_cols) if prev_cols else np.zeros(0, np.int64)
    rows_of_step = np.concatenate(step_row) if step_row else np.zeros(0, np.int64)
    k = np.arange(cols.size)
    has_prev = prevs >= 0
    steps = sp.csr_matrix(
        (
            np.concatenate([np.ones(cols.size), -np.ones(int(has_prev.sum()))]),
            (np.concatenate([k, k[has_prev]]), np.concatenate([cols, prevs[has_prev]])),
        ),
        shape=(cols.size, num_beamlets),
    )
    rows = sp.csr_matrix((np.ones(cols.size), (rows_of_step, k)), shape=(n_rows, cols.size))
    return SweepMU(
        steps=steps,
        rows=rows,
        beam_of_row=np.concatenate(beam_of_row) if beam_of_row else np.zeros(0, np.int64),
        num_beams=len(layouts),
    )


@dataclass
class FluenceRegularizer:
    """Smoothing penalty and weight bound of a fluence (see the module docstring)."""

    differences: sp.csr_matrix
    open_weight: float  # w_open, course MU-weight of the open field
    prescription_gy: float
    smooth_weight: float = 0.0
    max_factor: float | None = None
    sweep: SweepMU | None = None
    mu_cap: float | None = None  # the estimated sweep MU above mu_cap x the open-field MU is penalised
    mu_weight: float = 1.0

    @property
    def _sweep_eps(self) -> float:
        """Smoothing width of the rising steps' positive part: 0.1 % of the open-field weight."""
        return 1e-3 * self.open_weight

    @property
    def upper_bound(self) -> float | None:
        """The largest weight a beamlet may take (course MU-weight), None = unbounded."""
        return None if self.max_factor is None else self.max_factor * self.open_weight

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """S(w) and its gradient (zero when smoothing is off or there are no neighbours)."""
        n = self.differences.shape[0]
        value, grad = 0.0, np.zeros_like(w)
        if self.smooth_weight > 0 and n > 0:
            c = self.smooth_weight * self.prescription_gy**2 / (self.open_weight**2 * n)
            r = self.differences @ w
            value, grad = float(c * np.dot(r, r)), 2.0 * c * (self.differences.T @ r)
        if self.sweep is not None and self.mu_cap is not None:
            open_mu = self.sweep.num_beams * self.open_weight
            mu, g = self.sweep.value_and_grad(w, self._sweep_eps)
            excess = mu / open_mu - self.mu_cap
            if excess > 0:
                c = self.mu_weight * self.prescription_gy**2
                value += c * excess * excess
                grad = grad + (2.0 * c * excess / open_mu) * g
        return value, grad

    def sweep_mu_ratio(self, w: np.ndarray) -> float:
        """The estimated sweep MU over the open-field MU (0 without the sweep operator)."""
        if self.sweep is None:
            return 0.0
        return self.sweep.value_and_grad(w, self._sweep_eps)[0] / (self.sweep.num_beams * self.open_weight)
