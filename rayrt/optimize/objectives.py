"""Planning objectives and constraints on voxel doses, each with value and analytic gradient.

Every term acts on the dose ``d`` (Gy, float) of the voxels of one structure (``n`` voxels).
Values are *means over the structure's voxels* (so a term's weight does not grow with the
structure's size), the convention of matRad / pyRadPlan:

==================== ==============================================================
kind                 value f(d)
==================== ==============================================================
squared_deviation    mean (d - D)^2
squared_overdose     mean max(d - D, 0)^2          (also ``max_dose`` as an objective)
squared_underdose    mean max(D - d, 0)^2          (also ``min_dose`` as an objective)
max_dvh  (D_V <= D)  mean over voxels *outside* the hottest V % of max(d - D, 0)^2
min_dvh  (D_V >= D)  mean over voxels *inside* the hottest V % of max(D - d, 0)^2
mean_dose            max(mean d - D, 0)^2
geud                 max(gEUD - D, 0)^2 for a >= 1 (organs); max(D - gEUD, 0)^2 for a < 1 (targets),
                     gEUD = (mean d^a)^(1/a)
dose_mimicking       mean max(|d - d_ref| - tol, 0)^2, d_ref a reference dose per voxel and
                     tol the tolerance (Gy) of the voxel's region
falloff              mean max(d - L, 0)^2, L a dose limit per voxel (Gy): the normal-tissue
                     fall-off of automatic planning (:mod:`rayrt.optimize.helper_structures`);
                     ``dose_gy`` is the smallest limit (the screening level)
==================== ==============================================================

As *hard constraints* every kind also defines a residual vector ``r(d)`` in Gy with the
constraint ``r <= 0`` (per voxel for max/min dose, DVH and dose mimicking; a scalar for mean
dose and gEUD), used by the augmented-Lagrangian optimiser in :mod:`rayrt.optimize.fmo`.
The DVH terms rank voxels by dose; their gradient is exact wherever the ranking is unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from rayrt.domain.errors import InputError

__all__ = ["Objective", "OBJECTIVES", "make_objective", "register_objective", "objective_kinds"]

_EPS_DOSE_GY = 1e-6


@dataclass
class Objective:
    """One objective (or hard constraint) on the voxels ``voxels`` (row indices into the problem's
    voxel subset) of one structure.

    ``dose_gy`` is the dose level D; ``volume_pct`` the DVH volume; ``a`` the gEUD exponent;
    ``reference_gy`` / ``tolerance_gy`` the per-voxel reference dose and tolerance of dose mimicking.
    ``goal_gy`` is the order's dose the term stands for when the optimiser aims elsewhere
    (organ aims below the goal, target aims following the normalisation; None: ``dose_gy``).
    ``upper_bound_only`` tells the optimiser which one-sided screening is exact for this term:
    +1 = only voxels whose dose exceeds ``dose_gy`` contribute, -1 = only voxels below it, 0 = all.
    """

    kind: str
    structure: str
    voxels: np.ndarray
    dose_gy: float
    weight: float = 1.0
    hard: bool = False
    volume_pct: float | None = None
    a: float | None = None
    reference_gy: np.ndarray | None = None
    tolerance_gy: np.ndarray | float | None = None
    goal_gy: float | None = None
    screen_sign: int = 0
    _value_grad: Callable[..., Any] | None = field(default=None, repr=False)
    _residual: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.voxels.size)

    def value_and_grad(self, d: np.ndarray) -> tuple[float, np.ndarray]:
        """Unweighted value and gradient d f / d d (per voxel of this structure)."""
        if self._value_grad is None:
            raise ValueError(
                f"objective '{self.kind}' on '{self.structure}' has no value function; build it with make_objective"
            )
        return self._value_grad(self, np.asarray(d, dtype=np.float64))

    def value(self, d: np.ndarray) -> float:
        return self.value_and_grad(d)[0]

    def restricted(self, positions: np.ndarray) -> "Objective":
        """This term on a subset of its voxels (positions into ``voxels``), per-voxel references
        sliced alike: what the screened evaluation of :mod:`rayrt.optimize.fmo` evaluates."""
        if self.reference_gy is None:
            return replace(self, voxels=self.voxels[positions])
        tol = self.tolerance_gy
        if isinstance(tol, np.ndarray) and tol.ndim:
            tol = tol[positions]
        return replace(self, voxels=self.voxels[positions], reference_gy=self.reference_gy[positions], tolerance_gy=tol)

    def residual(self, d: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Constraint residual r(d) (Gy, constraint r <= 0) and its vector-Jacobian product v -> J^T v."""
        if self._residual is None:
            raise ValueError(
                f"objective '{self.kind}' on '{self.structure}' has no residual function; build it with make_objective"
            )
        return self._residual(self, np.asarray(d, dtype=np.float64))

    def max_violation_gy(self, d: np.ndarray) -> float:
        """Largest residual, clipped at 0: how far (Gy) the dose is from satisfying this as a constraint."""
        r, _ = self.residual(d)
        return float(max(0.0, r.max())) if r.size else 0.0


# ----------------------------------------------------------------------------- value + gradient
def _volume_pct(o: Objective) -> float:
    """The DVH volume V (%) of a min_dvh / max_dvh term (make_objective guarantees it is set)."""
    if o.volume_pct is None:
        raise ValueError(f"objective '{o.kind}' on '{o.structure}' needs volume_pct")
    return o.volume_pct


def _exponent(o: Objective) -> float:
    """The gEUD exponent a of a geud term (make_objective guarantees it is set and non-zero)."""
    if o.a is None:
        raise ValueError(f"objective '{o.kind}' on '{o.structure}' needs the gEUD exponent a")
    return o.a


def _sq_dev(o: Objective, d):
    e = d - o.dose_gy
    return float(np.mean(e * e)), (2.0 / d.size) * e


def _sq_over(o: Objective, d):
    e = np.maximum(d - o.dose_gy, 0.0)
    return float(np.mean(e * e)), (2.0 / d.size) * e


def _sq_under(o: Objective, d):
    e = np.minimum(d - o.dose_gy, 0.0)
    return float(np.mean(e * e)), (2.0 / d.size) * e


def _top_mask(o: Objective, d) -> np.ndarray:
    """Boolean mask of the hottest ceil(V % n) voxels."""
    n = d.size
    k = int(np.ceil(_volume_pct(o) / 100.0 * n - 1e-9))
    mask = np.zeros(n, dtype=bool)
    if k >= n:
        mask[:] = True
    elif k > 0:
        mask[np.argpartition(-d, k - 1)[:k]] = True
    return mask


def _max_dvh(o: Objective, d):
    e = np.maximum(d - o.dose_gy, 0.0)
    e[_top_mask(o, d)] = 0.0
    return float(np.mean(e * e)), (2.0 / d.size) * e


def _min_dvh(o: Objective, d):
    e = np.minimum(d - o.dose_gy, 0.0)
    e[~_top_mask(o, d)] = 0.0
    return float(np.mean(e * e)), (2.0 / d.size) * e


def _mean_dose(o: Objective, d):
    e = max(float(np.mean(d)) - o.dose_gy, 0.0)
    return e * e, np.full(d.size, 2.0 * e / d.size)


def _geud_and_grad(a: float, d: np.ndarray) -> tuple[float, np.ndarray]:
    dd = np.maximum(d, _EPS_DOSE_GY)
    m = float(np.mean(dd**a))
    g = m ** (1.0 / a)
    grad = g / m * dd ** (a - 1.0) / d.size  # d gEUD / d d_i = gEUD^(1-a) d_i^(a-1) / n
    return g, grad


def _geud(o: Objective, d):
    a = _exponent(o)
    g, dg = _geud_and_grad(a, d)
    e = max(g - o.dose_gy, 0.0) if a >= 1 else min(g - o.dose_gy, 0.0)
    return e * e, 2.0 * e * dg


def _mimic(o: Objective, d):
    diff = d - o.reference_gy
    e = np.maximum(np.abs(diff) - o.tolerance_gy, 0.0)
    return float(np.mean(e * e)), (2.0 / d.size) * e * np.sign(diff)


def _falloff(o: Objective, d):
    e = np.maximum(d - o.reference_gy, 0.0)
    return float(np.mean(e * e)), (2.0 / d.size) * e


# ----------------------------------------------------------------------------- residuals (r <= 0)
def _ident(v):
    return v


def _neg(v):
    return -v


def _r_over(o, d):
    return d - o.dose_gy, _ident


def _r_under(o, d):
    return o.dose_gy - d, _neg


def _r_max_dvh(o, d):
    r = d - o.dose_gy
    r[_top_mask(o, d)] = -np.inf  # the hottest V % may exceed D
    return r, _ident


def _r_min_dvh(o, d):
    r = o.dose_gy - d
    r[~_top_mask(o, d)] = -np.inf  # only the hottest V % must reach D
    return r, _neg


def _r_mean(o, d):
    n = d.size
    return np.array([float(np.mean(d)) - o.dose_gy]), lambda v: np.full(n, float(v[0]) / n)


def _r_geud(o, d):
    g, dg = _geud_and_grad(o.a, d)
    s = 1.0 if o.a >= 1 else -1.0
    return np.array([s * (g - o.dose_gy)]), lambda v: s * float(v[0]) * dg


def _r_mimic(o, d):
    diff = d - o.reference_gy
    sgn = np.sign(diff)
    return np.abs(diff) - o.tolerance_gy, lambda v: v * sgn


def _r_falloff(o, d):
    return d - o.reference_gy, _ident


def _r_sq_dev(o, d):
    raise InputError(
        f"a squared_deviation objective on '{o.structure}' cannot be a hard constraint (it can never be "
        "exactly met); use min_dose/max_dose or min_dvh/max_dvh constraints, or set hard: false",
        kind="order",
        field="objectives.hard",
        status=422,
    )


#: kind -> (value_and_grad, residual, screen_sign)
OBJECTIVES: dict[str, tuple[Callable, Callable, int]] = {}


def register_objective(kind: str, value_grad: Callable, residual: Callable, screen_sign: int = 0) -> None:
    """Add an objective kind to the registry (value_and_grad(o, d), residual(o, d), screening sign)."""
    OBJECTIVES[kind] = (value_grad, residual, screen_sign)


register_objective("squared_deviation", _sq_dev, _r_sq_dev, 0)
register_objective("squared_overdose", _sq_over, _r_over, +1)
register_objective("max_dose", _sq_over, _r_over, +1)
register_objective("squared_underdose", _sq_under, _r_under, -1)
register_objective("min_dose", _sq_under, _r_under, -1)
register_objective("max_dvh", _max_dvh, _r_max_dvh, 0)
register_objective("min_dvh", _min_dvh, _r_min_dvh, 0)
register_objective("mean_dose", _mean_dose, _r_mean, 0)
register_objective("geud", _geud, _r_geud, 0)
register_objective("dose_mimicking", _mimic, _r_mimic, 0)
register_objective("falloff", _falloff, _r_falloff, +1)


def objective_kinds() -> list[str]:
    return sorted(OBJECTIVES)


def make_objective(
    kind: str,
    structure: str,
    voxels: np.ndarray,
    dose_gy: float,
    *,
    weight: float = 1.0,
    hard: bool = False,
    volume_pct: float | None = None,
    a: float | None = None,
    reference_gy: np.ndarray | None = None,
    tolerance_gy: np.ndarray | float | None = None,
    goal_gy: float | None = None,
) -> Objective:
    """Build one registered objective; raises :class:`InputError` for unknown kinds / missing parameters."""
    kind = getattr(kind, "value", kind)
    if kind not in OBJECTIVES:
        raise InputError(
            f"unknown objective kind '{kind}'; known kinds: {', '.join(objective_kinds())}",
            kind="order",
            field="objectives.kind",
        )
    vg, res, screen = OBJECTIVES[kind]
    voxels = np.asarray(voxels, dtype=np.int64)
    if kind in ("min_dvh", "max_dvh") and volume_pct is None:
        raise InputError(
            f"objective '{kind}' on '{structure}' needs volume_pct", kind="order", field="objectives.volume_pct"
        )
    if kind == "geud" and not a:
        raise InputError(
            f"objective 'geud' on '{structure}' needs a non-zero exponent a", kind="order", field="objectives.a"
        )
    if kind == "dose_mimicking":
        if reference_gy is None:
            raise InputError(
                f"dose_mimicking on '{structure}' needs a reference dose (pass reference_dose to build_problem)",
                kind="order",
                field="objectives.kind",
            )
        reference_gy = np.asarray(reference_gy, dtype=np.float64)
        if reference_gy.shape != voxels.shape:
            raise ValueError("reference_gy must have one value per voxel of the structure")
        tolerance_gy = np.asarray(dose_gy if tolerance_gy is None else tolerance_gy, dtype=np.float64)
    if kind == "falloff":
        if reference_gy is None or np.shape(reference_gy) != voxels.shape:
            raise ValueError("a falloff objective needs reference_gy: one dose limit (Gy) per voxel")
        reference_gy = np.asarray(reference_gy, dtype=np.float64)
        dose_gy = float(reference_gy.min()) if reference_gy.size else float(dose_gy)
    o = Objective(
        kind=kind,
        structure=structure,
        voxels=voxels,
        dose_gy=float(dose_gy),
        weight=float(weight),
        hard=bool(hard),
        volume_pct=volume_pct,
        a=a,
        reference_gy=reference_gy,
        tolerance_gy=tolerance_gy,
        goal_gy=None if goal_gy is None else float(goal_gy),
        screen_sign=screen,
    )
    o._value_grad = vg
    o._residual = res
    if hard:
        o.residual(
            np.full(max(o.n, 1), dose_gy, dtype=float)[: o.n] if o.reference_gy is None else o.reference_gy.copy()
        )
    return o
