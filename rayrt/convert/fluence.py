"""Fluence of step-and-shoot segments on any bixel grid: what conversion (:mod:`rayrt.convert.convert`)
and its release QA (:mod:`rayrt.convert.release`) both compute plan doses with.

The fluence of a bixel is MU x the bixel-averaged collimator transmission (leaves, jaws and both
layers of a dual-layer MLC) x the head-scatter factor Sc of the segment
(:func:`rayrt.dose.aperture.aperture_fluence`); a Dij column is the dose (Gy) of 1 MU through the
open bixel, so ``Dij @ fluence`` is the dose in Gy. The bixel rows need not be the machine's leaf
pairs: they may be finer, or end part-way across a pair (a Y jaw trimming a wide leaf).
"""

from __future__ import annotations

import numpy as np

from rayrt.domain.machine import MachineModel
from rayrt.domain.plan import Plan, Segment
from rayrt.dose.aperture import aperture_fluence
from rayrt.dose.geometry import BeamletGrid

__all__ = ["segments_fluence_on_bixels", "plan_fluence"]


def segments_fluence_on_bixels(segments: list[Segment], machine: MachineModel, beamlets: BeamletGrid) -> np.ndarray:
    """Effective fluence (MU x mean collimator transmission x Sc, per bixel of ``beamlets``) of
    ``machine``'s segments; MU as the segments carry them (per fraction in a Plan, course MU in
    the optimiser). ``Dij @ this`` is the dose in Gy."""
    return aperture_fluence(beamlets, segments, machine)


def plan_fluence(plan: Plan, machine: MachineModel, grids: list[BeamletGrid]) -> np.ndarray:
    """Course fluence (MU per fraction x fractions) of a plan's segments on its beams' bixel grids,
    all beams concatenated in Dij column order (``grids[b]`` belongs to ``plan.beams[b]``)."""
    per_beam = [segments_fluence_on_bixels(b.segments, machine, g) for b, g in zip(plan.beams, grids)]
    return np.concatenate(per_beam) * plan.fractions
