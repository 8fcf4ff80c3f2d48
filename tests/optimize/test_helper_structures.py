"""Helper structures of automatic planning on small synthetic grids, against hand-computed masks.

Expected distances are computed independently of the product code: for a box
``[lo, hi)`` along each axis the Euclidean distance (mm) of a voxel centre to the nearest voxel
centre of the box is ``sqrt(sum_axis (spacing * clip distance in voxels)^2)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayrt.optimize.helper_structures import build_helpers, distance_mm

N = 30
SPACING = (2.0, 2.0, 2.0)  # z, y, x mm
KZ, JY, IX = np.meshgrid(np.arange(N), np.arange(N), np.arange(N), indexing="ij")


def box(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """Boolean mask of the voxels lo <= (k, j, i) < hi."""
    return (KZ >= lo[0]) & (KZ < hi[0]) & (JY >= lo[1]) & (JY < hi[1]) & (IX >= lo[2]) & (IX < hi[2])


def box_distance_mm(lo, hi, spacing=SPACING) -> np.ndarray:
    """Hand-computed distance (mm) of every voxel centre to the box [lo, hi) (0 inside)."""
    total = np.zeros((N, N, N))
    for idx, a, b, h in zip((KZ, JY, IX), lo, hi, spacing):
        steps = np.maximum(np.maximum(a - idx, 0), idx - (b - 1))
        total += (steps * h) ** 2
    return np.sqrt(total)


# PTV70 nested inside PTV56; PTV56 reaches into the skin at its low-z face (slice 3).
PTV70_LO, PTV70_HI = (12, 12, 12), (18, 18, 18)
PTV56_LO, PTV56_HI = (3, 8, 8), (20, 22, 22)
EXTERNAL = box((2, 2, 2), (28, 28, 28))
SIB_GAP_MM = 4.0
ORGAN_GAP_MM = 4.0
SKIN_CROP_MM = 4.0
END = 0.3
LENGTH_MM = 10.0


@pytest.fixture(scope="module")
def nested():
    masks = {"PTV56": box(PTV56_LO, PTV56_HI), "PTV70": box(PTV70_LO, PTV70_HI)}
    h = build_helpers(
        {"PTV56": 56.0, "PTV70": 70.0},
        masks,
        SPACING,
        EXTERNAL,
        sib_gap_mm=SIB_GAP_MM,
        organ_gap_mm=ORGAN_GAP_MM,
        skin_crop_mm=SKIN_CROP_MM,
        falloff_end_frac=END,
        falloff_length_mm=LENGTH_MM,
    )
    return masks, h


def _skin() -> np.ndarray:
    """External voxels within 4 mm of the outside of the box external [2, 28): indices 2, 3, 26, 27."""
    near = np.zeros((N, N, N), bool)
    for idx in (KZ, JY, IX):
        near |= (idx <= 3) | (idx >= 26)
    return EXTERNAL & near


# ---------------------------------------------------------------------------- distance_mm
def test_distance_mm_anisotropic_single_voxel():
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = True
    d = distance_mm(mask, (1.0, 2.0, 3.0))
    k, j, i = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    expected = np.sqrt(((k - 1) * 1.0) ** 2 + ((j - 2) * 2.0) ** 2 + ((i - 3) * 3.0) ** 2)
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-12)
    assert d[1, 2, 3] == 0.0
    assert d[0, 0, 0] == pytest.approx(math.sqrt(1 + 16 + 81))


def test_distance_mm_of_a_box():
    lo, hi = (5, 10, 12), (9, 14, 20)
    np.testing.assert_allclose(distance_mm(box(lo, hi), SPACING), box_distance_mm(lo, hi), rtol=0, atol=1e-12)


def test_distance_mm_empty_mask_is_inf():
    d = distance_mm(np.zeros((3, 4, 5), bool), SPACING)
    assert d.shape == (3, 4, 5)
    assert np.isinf(d).all() and (d > 0).all()


# ---------------------------------------------------------------------------- SIB regions
def test_levels_highest_first(nested):
    _, h = nested
    assert list(h.levels.items()) == [("PTV70", 70.0), ("PTV56", 56.0)]


def test_exclusive_regions_disjoint_and_cover_the_union(nested):
    masks, h = nested
    ex70, ex56 = h.exclusive["PTV70"], h.exclusive["PTV56"]
    assert not (ex70 & ex56).any()
    np.testing.assert_array_equal(ex70 | ex56, masks["PTV70"] | masks["PTV56"])
    np.testing.assert_array_equal(ex70, masks["PTV70"])  # the highest keeps all its voxels
    np.testing.assert_array_equal(ex56, masks["PTV56"] & ~masks["PTV70"])
    assert int(ex56.sum()) == 17 * 14 * 14 - 6**3


def test_level_map(nested):
    masks, h = nested
    expected = np.zeros((N, N, N))
    expected[masks["PTV56"]] = 56.0
    expected[masks["PTV70"]] = 70.0
    np.testing.assert_array_equal(h.level_map_gy, expected)


def test_lower_target_optimised_outside_the_sib_gap_and_the_skin(nested):
    masks, h = nested
    d70 = box_distance_mm(PTV70_LO, PTV70_HI)
    ex56 = masks["PTV56"] & ~masks["PTV70"]
    # coverage goals see every voxel not in the higher level (a minimum suits the gap's higher dose)
    np.testing.assert_array_equal(h.coverage["PTV56"], ex56)
    np.testing.assert_array_equal(h.optimise["PTV56"], ex56 & (d70 > SIB_GAP_MM) & ~_skin())
    # the gap: 2 voxels (4 mm) around PTV70 along the axes; diagonal (2.83 mm) and (4, 2) (4.47 mm) neighbours
    assert not h.optimise["PTV56"][11, 15, 15] and not h.optimise["PTV56"][10, 15, 15]
    assert h.optimise["PTV56"][9, 15, 15]
    assert not h.optimise["PTV56"][11, 11, 15]
    assert h.optimise["PTV56"][10, 11, 15]  # sqrt(4^2 + 2^2) mm > 4 mm
    # the highest target: every voxel (none near the skin, nothing higher)
    np.testing.assert_array_equal(h.optimise["PTV70"], masks["PTV70"])
    np.testing.assert_array_equal(h.coverage["PTV70"], masks["PTV70"])
    assert h.notes == []


def test_skin_crop_removes_build_up_voxels_but_coverage_keeps_them(nested):
    masks, h = nested
    # PTV56 slice k=3 is 2 voxels (4 mm) from the outside (k=1): cropped from optimisation only
    slab = masks["PTV56"] & (KZ == 3)
    assert int(slab.sum()) == 14 * 14
    assert not (h.optimise["PTV56"] & slab).any()
    np.testing.assert_array_equal(h.coverage["PTV56"] & slab, slab)
    # slice k=4 is 6 mm from the outside: kept
    slab4 = masks["PTV56"] & (KZ == 4)
    np.testing.assert_array_equal(h.optimise["PTV56"] & slab4, slab4)
    d70 = box_distance_mm(PTV70_LO, PTV70_HI)
    assert int(h.optimise["PTV56"].sum()) == int((h.coverage["PTV56"] & (d70 > SIB_GAP_MM)).sum()) - 14 * 14


def test_no_skin_crop_without_external_or_with_zero_crop():
    masks = {"PTV56": box(PTV56_LO, PTV56_HI), "PTV70": box(PTV70_LO, PTV70_HI)}
    kw = dict(sib_gap_mm=SIB_GAP_MM, organ_gap_mm=ORGAN_GAP_MM, falloff_end_frac=END, falloff_length_mm=LENGTH_MM)
    levels = {"PTV70": 70.0, "PTV56": 56.0}
    for external, crop in ((None, SKIN_CROP_MM), (EXTERNAL, 0.0)):
        h = build_helpers(levels, masks, SPACING, external, skin_crop_mm=crop, **kw)
        d70 = box_distance_mm(PTV70_LO, PTV70_HI)
        np.testing.assert_array_equal(h.optimise["PTV56"], h.coverage["PTV56"] & (d70 > SIB_GAP_MM))


def test_adjacent_targets_gap_on_the_lower_side_only():
    high, low = box((10, 10, 10), (16, 20, 20)), box((16, 10, 10), (24, 20, 20))
    h = build_helpers(
        {"PTV56": 56.0, "PTV70": 70.0},
        {"PTV70": high, "PTV56": low},
        SPACING,
        None,
        sib_gap_mm=SIB_GAP_MM,
        organ_gap_mm=ORGAN_GAP_MM,
        skin_crop_mm=SKIN_CROP_MM,
        falloff_end_frac=END,
        falloff_length_mm=LENGTH_MM,
    )
    np.testing.assert_array_equal(h.exclusive["PTV56"], low)
    np.testing.assert_array_equal(h.optimise["PTV70"], high)
    # k = 16, 17 are 2 and 4 mm from the 70 Gy target: left to the gradient
    np.testing.assert_array_equal(h.optimise["PTV56"], low & (KZ >= 18))


def test_target_entirely_in_the_gap_keeps_its_voxels():
    high = box((12, 12, 12), (18, 18, 18))
    shell = box((11, 11, 11), (19, 19, 19)) & ~high  # 2 mm from PTV70 everywhere
    h = build_helpers(
        {"PTV70": 70.0, "PTV63": 63.0},
        {"PTV70": high, "PTV63": shell},
        SPACING,
        None,
        sib_gap_mm=SIB_GAP_MM,
        organ_gap_mm=ORGAN_GAP_MM,
        skin_crop_mm=SKIN_CROP_MM,
        falloff_end_frac=END,
        falloff_length_mm=LENGTH_MM,
    )
    np.testing.assert_array_equal(h.optimise["PTV63"], shell)
    np.testing.assert_array_equal(h.coverage["PTV63"], shell)


# ---------------------------------------------------------------------------- organs
def test_organ_overlapping_a_target_is_cropped_by_the_grown_targets(nested):
    masks, h = nested
    organ = box((18, 13, 13), (27, 16, 16))  # k 18, 19 inside PTV56
    d = np.minimum(box_distance_mm(PTV56_LO, PTV56_HI), box_distance_mm(PTV70_LO, PTV70_HI))
    np.testing.assert_array_equal(h.grown_targets, d <= ORGAN_GAP_MM)
    region = h.organ_region("Overlapping", organ)
    np.testing.assert_array_equal(region, organ & (d > ORGAN_GAP_MM))
    np.testing.assert_array_equal(region, organ & (KZ >= 22))  # k 20, 21 are 2 and 4 mm from PTV56
    assert h.organ_region("Overlapping", organ) is region  # cached


def test_organ_beside_a_target_keeps_all_its_voxels(nested):
    _, h = nested
    organ = box((20, 13, 13), (27, 16, 16))  # touches PTV56's face (2 mm), does not overlap
    assert (organ & h.grown_targets).any()
    np.testing.assert_array_equal(h.organ_region("Beside", organ), organ)


# ---------------------------------------------------------------------------- fall-off
def test_falloff_region_with_external(nested):
    masks, h = nested
    np.testing.assert_array_equal(h.falloff_region, EXTERNAL & ~masks["PTV56"] & ~masks["PTV70"])


def test_falloff_limit_two_levels_hand_computed(nested):
    _, h = nested
    d56 = box_distance_mm(PTV56_LO, PTV56_HI)
    d70 = box_distance_mm(PTV70_LO, PTV70_HI)
    expected = np.maximum(
        56.0 * (END + (1 - END) * np.exp(-d56 / LENGTH_MM)), 70.0 * (END + (1 - END) * np.exp(-d70 / LENGTH_MM))
    )
    np.testing.assert_allclose(h.falloff_limit_gy, expected, rtol=1e-12, atol=0)
    # inside each target the limit is at least its level; inside PTV70 exactly 70
    assert (h.falloff_limit_gy[box(PTV70_LO, PTV70_HI)] == 70.0).all()


def test_falloff_limit_single_target_decreases_to_the_floor():
    target = box((12, 12, 12), (18, 18, 18))
    length = 6.0
    h = build_helpers(
        {"PTV": 60.0},
        {"PTV": target},
        SPACING,
        None,
        sib_gap_mm=SIB_GAP_MM,
        organ_gap_mm=ORGAN_GAP_MM,
        skin_crop_mm=SKIN_CROP_MM,
        falloff_end_frac=0.4,
        falloff_length_mm=length,
        falloff_reach_mm=20.0,
    )
    line = h.falloff_limit_gy[15, 15, 17:]  # from the target's last voxel (i=17) outwards along +x
    r_mm = 2.0 * np.arange(line.size)
    np.testing.assert_allclose(line, 60.0 * (0.4 + 0.6 * np.exp(-r_mm / length)), rtol=1e-12, atol=0)
    assert line[0] == 60.0  # the level on the target side of the edge
    assert (np.diff(line) < 0).all()
    assert (line > 0.4 * 60.0).all()
    assert line[-1] == pytest.approx(0.4 * 60.0, abs=0.6 * 60.0 * math.exp(-24 / length) + 1e-12)
    assert h.falloff_limit_gy.min() >= 0.4 * 60.0
    # without an external contour the region is the reach (20 mm) round the target, minus the target
    np.testing.assert_array_equal(h.falloff_region, (box_distance_mm((12, 12, 12), (18, 18, 18)) <= 20.0) & ~target)
    assert h.falloff_region[15, 15, 27] and not h.falloff_region[15, 15, 28]
