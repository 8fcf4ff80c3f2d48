"""Helper structures that automatic planning builds from the order, on the dose grid.

A planner never asks the user to draw these (PLANNING.md, "Helper structures"):

* **Target dose levels** (simultaneous integrated boost): a voxel in two targets belongs to the
  higher level. A lower-level target's level terms (under- and over-dose at its level) act on it
  minus the higher-level targets grown by ``sib_gap_mm``, so that no voxel is asked for two doses;
  its coverage goals (a minimum, compatible with the higher dose next to a higher level) act on all
  its voxels not in a higher level. Its goals are judged on the whole target.
* **Skin crop**: targets' level terms leave out the voxels within ``skin_crop_mm`` of the outside
  of the external contour (the build-up region, where no beam arrangement gives full dose without
  hot spots beneath); the coverage goals' terms keep them, so a D99 goal still sees every voxel
  but the 1 % it lets go.
* **Organ minus targets**: the objectives of an organ that overlaps a target act on the organ minus
  every target grown by ``organ_gap_mm``; the voxels inside receive the target's dose whatever the
  plan does. An organ that does not overlap a target keeps all its voxels.
* **Normal-tissue fall-off** (a continuous form of rings round the targets): every voxel of the
  external contour outside the targets has a dose limit
  ``L(x) = max_k level_k * (end + (1 - end) * exp(-r_k(x) / length_mm))``, ``r_k`` its distance
  (mm) from target k; a squared over-dose above ``L`` pushes the dose to fall off outside each
  target like Eclipse's normal-tissue objective.

Distances are Euclidean distance transforms with the grid's voxel spacing (mm), from voxel centre
to the nearest voxel centre of the structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["HelperStructures", "build_helpers", "distance_mm"]


def distance_mm(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of every voxel centre from the nearest voxel of ``mask`` (0 inside it);
    ``inf`` everywhere when the mask is empty."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.full(m.shape, np.inf)
    return ndimage.distance_transform_edt(~m, sampling=spacing_zyx_mm)


@dataclass
class HelperStructures:
    """The masks and limits automatic planning optimises on (boolean arrays on the dose grid)."""

    levels: dict[str, float]  # target -> dose level (Gy), highest first
    exclusive: dict[str, np.ndarray]  # target -> its voxels not in a higher-level target
    optimise: dict[str, np.ndarray]  # target -> exclusive minus higher targets + gap, minus the skin
    coverage: dict[str, np.ndarray]  # target -> its exclusive voxels (gap and skin kept): coverage goals
    level_map_gy: np.ndarray  # per voxel: the level of the target it belongs to (0 outside)
    grown_targets: np.ndarray  # every target grown by organ_gap_mm
    falloff_region: np.ndarray  # external minus the targets
    falloff_limit_gy: np.ndarray  # per voxel of the grid: the fall-off limit (Gy); valid in the region
    organ_regions: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def organ_region(self, organ: str, mask: np.ndarray) -> np.ndarray:
        """Where an organ's objectives act (cached): the organ minus the grown targets when it
        overlaps a target, else the whole organ (an organ beside a target is spared up to its edge)."""
        if organ not in self.organ_regions:
            m = np.asarray(mask, bool)
            overlaps = bool((m & (self.level_map_gy > 0)).any())
            self.organ_regions[organ] = m & ~self.grown_targets if overlaps else m
        return self.organ_regions[organ]


def build_helpers(
    levels: dict[str, float],
    masks: dict[str, np.ndarray],
    spacing_zyx_mm: tuple[float, float, float],
    external: np.ndarray | None,
    *,
    sib_gap_mm: float,
    organ_gap_mm: float,
    skin_crop_mm: float,
    falloff_end_frac: float,
    falloff_length_mm: float,
    falloff_reach_mm: float = 60.0,
) -> HelperStructures:
    """Build the helper structures for targets ``levels`` (name -> Gy) from the structure masks.

    Without an external contour the fall-off covers the voxels within ``falloff_reach_mm`` of a
    target; with one, the whole external contour outside the targets (voxels beyond the reach keep
    the fall-off's floor, ``falloff_end_frac`` x the highest level)."""
    order = sorted(levels, key=lambda t: -levels[t])
    shape = np.asarray(masks[order[0]]).shape
    taken = np.zeros(shape, bool)
    level_map = np.zeros(shape)
    exclusive: dict[str, np.ndarray] = {}
    for t in order:
        m = np.asarray(masks[t], bool)
        exclusive[t] = m & ~taken
        level_map[exclusive[t]] = levels[t]
        taken |= m
    all_targets = taken
    dist = {t: distance_mm(np.asarray(masks[t], bool), spacing_zyx_mm) for t in order}
    skin = np.zeros(shape, bool)
    notes: list[str] = []
    if external is not None and skin_crop_mm > 0:
        outside = ~np.asarray(external, bool)
        if outside.any():
            skin = distance_mm(outside, spacing_zyx_mm) <= skin_crop_mm
    optimise: dict[str, np.ndarray] = {}
    coverage: dict[str, np.ndarray] = {}
    higher = np.zeros(shape, bool)
    for t in order:
        near_higher = np.zeros(shape, bool)
        if higher.any():
            near_higher = distance_mm(higher, spacing_zyx_mm) <= sib_gap_mm
        coverage[t] = exclusive[t]  # a minimum is compatible with the higher dose next to a higher level
        region = exclusive[t] & ~near_higher & ~skin
        if not region.any():  # a target entirely in the gap or the skin keeps its own voxels
            region = exclusive[t]
            notes.append(f"{t}: no voxel left after the SIB gap and skin crop; optimised on all its voxels")
        optimise[t] = region
        higher |= np.asarray(masks[t], bool)
    grown = np.zeros(shape, bool)
    for t in order:
        grown |= dist[t] <= organ_gap_mm
    limit = np.zeros(shape)
    for t in order:
        g = falloff_end_frac + (1.0 - falloff_end_frac) * np.exp(-dist[t] / falloff_length_mm)
        limit = np.maximum(limit, levels[t] * g)
    if external is not None:
        region = np.asarray(external, bool) & ~all_targets
    else:
        region = (np.minimum.reduce([dist[t] for t in order]) <= falloff_reach_mm) & ~all_targets
    return HelperStructures(
        levels={t: levels[t] for t in order},
        exclusive=exclusive,
        optimise=optimise,
        coverage=coverage,
        level_map_gy=level_map,
        grown_targets=grown,
        falloff_region=region,
        falloff_limit_gy=limit,
        notes=notes,
    )
