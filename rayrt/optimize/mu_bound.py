"""The bound on a plan's total MU, as the plan will be delivered: after prescription normalisation.

Treatable complexity asks for "no plan above ``k`` x the open-field MU" (``k`` = 4 by default,
:attr:`rayrt.domain.planning.PlanningRequest.max_mu_factor`): the open-field MU is that of one
open segment per beam over its beamlet grid with the prescription as mean target dose
(:mod:`rayrt.optimize.regularize`). The optimisers cannot bound the raw MU: the final
normalisation scales every MU by ``f = Rx x value_pct / metric(target dose)``, so a plan whose
target is 1 % under-dosed leaves with 1 % more MU. The bounded quantity is therefore the
*normalised* total MU

    N(m) = f(m) x sum_s m_s          (course MU; invariant under a uniform scaling of m)

and the constraint ``N <= L`` with ``L = k x open-field course MU x (1 - margin)``; the margin
(:data:`MU_BOUND_MARGIN`) leaves room for the minimum-MU raise of the final normalisation and for
the small difference between an optimiser's aperture model and the final dose.

The constraint enters the objective as a one-sided quadratic penalty in the relative excess
``h = N / L - 1``: ``P = c x Rx^2 x max(0, h)^2`` (commensurate with the dose objectives, mean
squared Gy: an excess of 1 % costs ``c x 1e-4 x Rx^2``); a caller that finds ``N > L`` after its
solve raises ``c`` (:data:`MU_BOUND_STIFFNESS_STEPS`) and solves again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrt.domain.order import MedicalOrder
from rayrt.optimize.normalize import metric_weights

__all__ = [
    "MU_BOUND_EXTRA_ROUNDS",
    "MUBound",
    "NormalisedMU",
    "normalised_mu_bound",
    "MU_BOUND_MARGIN",
    "MU_BOUND_STIFFNESS_STEPS",
]

MU_BOUND_MARGIN = 0.02
"""Fraction of the MU limit the optimisers keep free (minimum-MU raise, aperture-model round-off)."""

MU_BOUND_EXTRA_ROUNDS = 3
"""Leaf rounds DAO adds (each with a stiffer penalty) while the apertures' normalised MU exceeds the bound."""

MU_BOUND_STIFFNESS_STEPS = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)
"""The penalty coefficients ``c`` a caller tries in turn until the normalised MU is within the bound."""


@dataclass
class MUBound:
    """``N <= limit_course_mu`` as the penalty ``stiffness x Rx^2 x max(0, N / limit - 1)^2``."""

    limit_course_mu: float
    prescription_gy: float
    stiffness: float = MU_BOUND_STIFFNESS_STEPS[0]

    @classmethod
    def from_open_field(
        cls, factor: float, open_field_course_mu: float, prescription_gy: float, margin: float = MU_BOUND_MARGIN
    ) -> "MUBound":
        """The bound ``factor`` x the open-field MU (course MU, all beams), less ``margin``."""
        return cls(factor * open_field_course_mu * (1.0 - margin), prescription_gy)

    def excess(self, normalised_mu: float) -> float:
        """Relative excess ``N / limit - 1`` (negative within the bound)."""
        return normalised_mu / self.limit_course_mu - 1.0

    def penalty(self, normalised_mu: float) -> tuple[float, float]:
        """``P(N)`` and ``dP/dN``."""
        h = self.excess(normalised_mu)
        if h <= 0:
            return 0.0, 0.0
        c = self.stiffness * self.prescription_gy**2
        return c * h * h, 2.0 * c * h / self.limit_course_mu

    def stiffer(self) -> bool:
        """Move to the next stiffness step; False when none is left."""
        later = [c for c in MU_BOUND_STIFFNESS_STEPS if c > self.stiffness]
        if not later:
            return False
        self.stiffness = later[0]
        return True


@dataclass
class NormalisedMU:
    """The bound on the normalised MU of a plan on one optimisation problem: the normalisation
    structure's problem ``rows``, ``rx_gy`` = the prescription x ``value_pct`` / 100 and the metric's
    ``volume_pct`` (``D<volume_pct>``; None: the mean), so ``f = rx_gy / metric(dose on rows)``."""

    bound: MUBound
    rows: np.ndarray
    rx_gy: float
    volume_pct: float | None

    def value(self, total_course_mu: float, target_dose_gy: np.ndarray) -> float:
        """``N = f x total MU`` for the dose on ``rows`` (Gy)."""
        mv = metric_weights(np.asarray(target_dose_gy, dtype=np.float64), self.volume_pct)[0]
        return self.rx_gy / max(mv, 1e-9) * total_course_mu

    def mean_ratio(self, target_dose_gy: np.ndarray) -> float:
        """mean / metric of the dose on ``rows``: what turns the smooth mean into the metric."""
        d = np.asarray(target_dose_gy, dtype=np.float64)
        return float(d.mean()) / max(metric_weights(d, self.volume_pct)[0], 1e-9)

    def penalty(
        self, total_course_mu: float, target_dose_gy: np.ndarray, mean_ratio: float
    ) -> tuple[float, float, np.ndarray]:
        """The penalty of ``N`` with the metric taken as mean / ``mean_ratio`` (smooth: a ``Dx``'s
        two-voxel gradient jumps as the voxels' ranks change, which stalls a line search once the
        penalty is stiff; a caller refreshes ``mean_ratio`` between solves and judges the exact
        :meth:`value`). Returns (P, dP/d(total MU), dP/d(dose) on every row)."""
        d = np.asarray(target_dose_gy, dtype=np.float64)
        metric = max(float(d.mean()) / mean_ratio, 1e-9)
        big_n = self.rx_gy / metric * total_course_mu
        p, dp = self.bound.penalty(big_n)
        if p <= 0:
            return 0.0, 0.0, np.zeros(d.size)
        return p, dp * self.rx_gy / metric, np.full(d.size, -dp * big_n / metric / (mean_ratio * d.size))


def normalised_mu_bound(
    structure_rows: dict[str, np.ndarray], order: MedicalOrder, max_mu_factor: float | None, open_field_course_mu: float
) -> NormalisedMU | None:
    """The order's normalised-MU bound on an optimisation problem whose rows of each structure are
    ``structure_rows``: ``max_mu_factor`` x the open-field MU (course MU, all beams); None when
    unbounded, when the order does not normalise, or when the normalisation structure has no row."""
    norm = order.prescription.normalization
    rows = structure_rows.get(norm.structure or order.prescription.target)
    if max_mu_factor is None or open_field_course_mu <= 0 or norm.metric == "none" or rows is None or not rows.size:
        return None
    return NormalisedMU(
        MUBound.from_open_field(max_mu_factor, open_field_course_mu, order.prescription.total_dose_gy),
        rows,
        order.prescription.total_dose_gy * norm.value_pct / 100.0,
        None if norm.metric == "mean" else norm.volume_pct,
    )
