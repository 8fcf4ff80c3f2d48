"""Semi-automatic delineation: a person gives a hint (a seed, a few slices, a box), the tool does the rest.

* :func:`region_grow` -- seeded region growing: the 3-D connected region (6/18/26-neighbours) of
  voxels whose value lies in an intensity window [lo, hi], containing the seed voxel, optionally
  limited to a box. Leaks are refused rather than returned (region touching most image faces, or
  larger than a fraction of the External).
* :func:`interpolate_slices` -- shape-based interpolation (Raya & Udupa 1990; Herman et al. 1992):
  the signed Euclidean distance map (mm, in-plane sampling) of each key slice is interpolated
  linearly in z between neighbouring key slices and thresholded at 0, so the shape morphs
  smoothly between drawn slices.
* :func:`boolean`, :func:`ring`, :func:`crop` -- set algebra and derived helper structures.
* :func:`pet_threshold` -- PET-avid target: SUV >= an absolute value, or >= a percentage of the
  SUVmax inside a box, evaluated on the CT grid by trilinear interpolation of the PET SUV (the
  PET is in the CT's frame of reference).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from rayrt.contour.morphology import Margins, bbox, connectivity_structure, contract, expand
from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid, Volume


def _fmt(xyz) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in xyz) + ")"


def seed_index(grid: Grid, seed_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """Nearest voxel (k, j, i) of an LPS point; InputError when it lies outside the image."""
    kji = grid.world_to_index(np.asarray(seed_mm, dtype=float))
    idx = np.rint(kji).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(grid.shape)):
        lo, hi = grid.bounds_mm()
        raise InputError(
            f"seed {_fmt(seed_mm)} mm is outside the image, which spans x {lo[0]:.1f}..{hi[0]:.1f}, "
            f"y {lo[1]:.1f}..{hi[1]:.1f}, z {lo[2]:.1f}..{hi[2]:.1f} mm (LPS); give a seed inside it",
            kind="contour",
            field="seed_mm",
        )
    return int(idx[0]), int(idx[1]), int(idx[2])


def box_slices(grid: Grid, box_min_mm, box_max_mm) -> tuple[slice, slice, slice]:
    """Index slices (k, j, i) of the voxels whose centres lie in an LPS box (axis-aligned grids)."""
    lo = np.asarray(box_min_mm, dtype=float)
    hi = np.asarray(box_max_mm, dtype=float)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    kji = grid.world_to_index(corners)
    kmin = np.ceil(kji.min(axis=0) - 1e-6).astype(int)
    kmax = np.floor(kji.max(axis=0) + 1e-6).astype(int)
    kmin = np.maximum(kmin, 0)
    kmax = np.minimum(kmax, np.asarray(grid.shape) - 1)
    if np.any(kmax < kmin):
        raise InputError(f"box {_fmt(lo)}..{_fmt(hi)} mm holds no voxel of the image", kind="contour", field="box_mm")
    sk, sj, si = (slice(int(a), int(b) + 1) for a, b in zip(kmin, kmax))
    return sk, sj, si


def region_grow(
    image: Volume,
    seed_mm: tuple[float, float, float],
    window: tuple[float, float],
    box_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
    connectivity: int = 1,
    body: np.ndarray | None = None,
    max_fraction_of_body: float = 0.5,
    max_border_faces: int = 3,
) -> np.ndarray:
    """Seeded region growing on ``image`` (values in the image's unit, e.g. HU); bool mask on ``image.grid``."""
    lo, hi = float(window[0]), float(window[1])
    if not lo <= hi:
        raise InputError(f"intensity window [{lo:g}, {hi:g}] is empty; give LO <= HI", kind="contour", field="window")
    grid = image.grid
    seed = seed_index(grid, seed_mm)
    box = (
        box_slices(grid, *box_mm)
        if box_mm is not None
        else (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    )
    if not all(b.start <= s < b.stop for b, s in zip(box, seed)):
        raise InputError(
            f"seed {_fmt(seed_mm)} mm lies outside the box; put the seed inside the box",
            kind="contour",
            field="seed_mm",
        )
    value = float(image.array[seed])
    if not lo <= value <= hi:
        raise InputError(
            f"the seed voxel's value is {value:g}, outside the window [{lo:g}, {hi:g}]; "
            "widen the window or move the seed",
            kind="contour",
            field="window",
        )
    crop = image.array[box]
    cand = (crop >= lo) & (crop <= hi)
    lab, _ = ndi.label(cand, structure=connectivity_structure(connectivity))
    local = tuple(s - b.start for s, b in zip(seed, box))
    region = lab == lab[local]
    out = np.zeros(grid.shape, dtype=bool)
    out[box] = region
    # leak checks
    faces = 0
    rb = bbox(out)
    assert rb is not None
    for ax in range(3):
        faces += int(rb[ax].start == 0) + int(rb[ax].stop == grid.shape[ax])
    if faces > max_border_faces:
        raise InputError(
            f"the grown region touches {faces} of the 6 image faces: the window [{lo:g}, {hi:g}] leaks into the "
            "surroundings; narrow the window or give a bounding box",
            kind="contour",
            field="window",
        )
    n = int(out.sum())
    ref = int(body.sum()) if body is not None and body.any() else grid.num_voxels
    what = "External" if body is not None and body.any() else "image"
    if n > max_fraction_of_body * ref:
        raise InputError(
            f"the grown region has {n} voxels, {100.0 * n / ref:.0f} % of the {what} "
            f"(limit {100 * max_fraction_of_body:.0f} %): "
            "the window leaks; narrow the window or give a bounding box",
            kind="contour",
            field="window",
        )
    return out


def signed_distance_2d(mask2d: np.ndarray, spacing_ji_mm: tuple[float, float]) -> np.ndarray:
    """Signed Euclidean distance (mm) of one slice: negative inside, positive outside, 0 half-way across the edge."""
    if not mask2d.any():
        return np.full(mask2d.shape, 1e6, dtype=np.float64)
    outside = ndi.distance_transform_edt(~mask2d, sampling=spacing_ji_mm)
    inside = ndi.distance_transform_edt(mask2d, sampling=spacing_ji_mm)
    return outside - inside


def interpolate_slices(mask: np.ndarray, grid: Grid, key_slices: list[int] | None = None) -> np.ndarray:
    """Shape-based interpolation between the key slices of a mask (default: its non-empty slices).

    Every slice strictly between two consecutive key slices is replaced by the zero level of the
    z-linear blend of the two key slices' signed distance maps; key slices and slices outside the
    first..last key slice are unchanged.
    """
    keys = sorted(
        set(int(k) for k in (key_slices if key_slices is not None else np.flatnonzero(mask.any(axis=(1, 2)))))
    )
    if len(keys) < 2:
        raise InputError(
            f"interpolation needs contours on at least two slices (found {len(keys)}); "
            "draw the structure on more slices",
            kind="contour",
        )
    if keys[0] < 0 or keys[-1] >= mask.shape[0]:
        raise InputError("key slice index outside the image", kind="contour")
    nb = bbox(mask, (0, 2, 2))
    if nb is None:
        raise InputError("interpolation: the structure is empty", kind="contour")
    _, sj, si = nb
    sp = (grid.spacing[1], grid.spacing[0])
    z = grid.axis_mm("z") if grid.is_axis_aligned else np.arange(grid.shape[0]) * grid.spacing[2]
    out = mask.copy()
    prev_sdf = signed_distance_2d(mask[keys[0], sj, si], sp)
    for k0, k1 in zip(keys[:-1], keys[1:]):
        sdf1 = signed_distance_2d(mask[k1, sj, si], sp)
        for k in range(k0 + 1, k1):  # one 2-D array operation per in-between slice
            t = (z[k] - z[k0]) / (z[k1] - z[k0])
            out[k] = False
            out[k, sj, si] = (1.0 - t) * prev_sdf + t * sdf1 < 0.0
        prev_sdf = sdf1
    return out


BooleanOp = Literal["union", "intersection", "subtraction"]


def boolean(op: BooleanOp, a: list[np.ndarray], b: list[np.ndarray] | None = None) -> np.ndarray:
    """union: OR of all; intersection: AND of all; subtraction: (OR of ``a``) minus (OR of ``b``)."""
    b = b or []
    if op == "union":
        return np.logical_or.reduce(a + b)
    if op == "intersection":
        return np.logical_and.reduce(a + b)
    if op == "subtraction":
        if not b:
            raise InputError("subtraction needs structures to subtract (b)", kind="contour", field="b")
        return np.logical_or.reduce(a) & ~np.logical_or.reduce(b)
    raise InputError(f"unknown boolean operation {op!r}; use union, intersection or subtraction", kind="contour")


def ring(mask: np.ndarray, grid: Grid, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Shell between an inner and an outer isotropic expansion of a structure (mm; inner may be 0)."""
    if not 0 <= inner_mm < outer_mm:
        raise InputError(
            f"ring needs 0 <= inner < outer margin (got inner {inner_mm:g} mm, outer {outer_mm:g} mm)", kind="contour"
        )
    outer = expand(mask, grid, Margins.isotropic(outer_mm))
    inner = expand(mask, grid, Margins.isotropic(inner_mm)) if inner_mm > 0 else mask
    return outer & ~inner


def crop(mask: np.ndarray, to: np.ndarray, grid: Grid, inside_margin_mm: float = 0.0) -> np.ndarray:
    """A mask cut to another structure (e.g. External), optionally ``inside_margin_mm`` inside its surface."""
    limit = contract(to, grid, Margins.isotropic(inside_margin_mm)) if inside_margin_mm > 0 else to
    return mask & limit


def pet_threshold(
    pet: Volume,
    grid: Grid,
    box_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None,
    suv: float | None = None,
    percent_of_max: float | None = None,
    connected_to_max: bool = True,
) -> tuple[np.ndarray, float, float]:
    """PET threshold structure on ``grid`` (the CT grid): (mask, threshold SUV, SUVmax in the box).

    SUVmax is taken over the PET voxels whose centres lie in the box (native PET grid, no
    interpolation); the threshold is ``suv`` or ``percent_of_max`` % of that SUVmax; the SUV is
    then interpolated trilinearly at the CT voxel centres inside the box and thresholded. With
    ``connected_to_max`` only the region connected to the CT voxel nearest the SUVmax voxel is kept.
    """
    if (suv is None) == (percent_of_max is None):
        raise InputError("give exactly one of an absolute SUV threshold or a percentage of SUVmax", kind="contour")
    if percent_of_max is not None and box_mm is None:
        raise InputError(
            "a percentage-of-SUVmax threshold needs a box around the lesion (box_mm)", kind="contour", field="box_mm"
        )
    if box_mm is None:
        lo, hi = pet.grid.bounds_mm()
        box_mm = (tuple(lo), tuple(hi))
    pbox = box_slices(pet.grid, *box_mm)
    sub = np.asarray(pet.array[pbox], dtype=np.float64)
    suv_max = float(sub.max())
    if not np.isfinite(suv_max) or suv_max <= 0:
        raise InputError("the PET has no positive uptake inside the box", kind="contour", field="box_mm")
    if suv is not None:
        threshold = float(suv)
    else:
        assert percent_of_max is not None  # exactly one of suv / percent_of_max (checked above)
        threshold = float(percent_of_max) / 100.0 * suv_max
    if threshold > suv_max:
        raise InputError(
            f"SUV threshold {threshold:.2f} is above the SUVmax {suv_max:.2f} inside the box; lower it or move the box",
            kind="contour",
        )
    cbox = box_slices(grid, *box_mm)
    kk, jj, ii = np.meshgrid(*(np.arange(s.start, s.stop) for s in cbox), indexing="ij")
    centres = grid.index_to_world(np.stack([kk, jj, ii], axis=-1))
    values = pet.sample(centres, order=1, fill=0.0)
    region = values >= threshold
    if connected_to_max and region.any():
        lab, _ = ndi.label(region, structure=connectivity_structure(1))
        kmax = np.unravel_index(int(np.argmax(sub)), sub.shape)
        world_max = pet.grid.index_to_world(np.array(kmax, dtype=float) + np.array([s.start for s in pbox]))
        loc = np.rint(grid.world_to_index(world_max)).astype(int) - np.array([s.start for s in cbox])
        loc = np.clip(loc, 0, np.array(region.shape) - 1)
        target = lab[tuple(loc)]
        if target == 0:  # the nearest CT voxel fell just outside: take the region with the highest SUV
            target = lab.ravel()[int(np.argmax(np.where(region, values, -np.inf)))]
        region = lab == target
    out = np.zeros(grid.shape, dtype=bool)
    out[cbox] = region
    return out, threshold, suv_max
