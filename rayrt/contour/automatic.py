"""Automatic delineation: External (body), lungs (left/right), bones and air cavities.

CT (Hounsfield units):

* **External**: threshold (``body.threshold_hu``), then on a coarse in-plane grid (about
  ``body.work_spacing_mm``) an in-plane opening of ``body.opening_radius_mm`` cuts the thin
  bridges to the couch and immobilisation, the largest 3-D connected region is the patient, and
  the thin parts the opening removed are given back within that radius unless they belong to
  something else (they touch a thick non-body object, or lie mostly far from the body: couch
  shells and plates that touch the patient). Holes are filled per axial slice (lungs, bowel gas and
  airways belong to the body). The outline is then refined at full resolution: full-resolution
  threshold inside the (one coarse voxel wider) coarse body, plus the coarse interior.
* **Lungs**: inside External and below ``lungs.threshold_hu``; regions of at least
  ``lungs.min_volume_cc``; the two largest are the lungs, or one joined region is split by eroding
  until it falls into two parts and giving every voxel to the nearer part. The lung with the larger
  mean LPS x is the patient's left (``Lung_L``). Vessels inside the outline are included (holes
  filled per slice) and the outline is closed by ``lungs.closing_radius_mm``.
* **Bones**: inside External and above ``bones.threshold_hu``, pieces below
  ``bones.min_component_cc`` dropped, marrow included (holes filled per slice).
* **Air cavities**: inside External, below ``cavities.threshold_hu``, not lung, pieces of at least
  ``cavities.min_component_cc``.

MR and PET: the body outline only, from Otsu's threshold of the smoothed intensity histogram
(moved towards the background level by ``non_ct_body.otsu_scale``), then the same cleanup. Lungs,
bones and cavities on MR or PET raise :class:`InputError` (there is no calibrated intensity scale to threshold).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from rayrt.contour.config import ContourConfig
from rayrt.contour.morphology import (
    bbox,
    close_2d,
    dilate_2d,
    disk_2d,
    erode_2d,
    fill_holes_per_slice,
    largest_component,
    open_2d,
    remove_small_components,
)
from rayrt.domain.errors import InputError
from rayrt.domain.patient import StructureKind
from rayrt.imaging.volume import Grid, Volume

AUTO_TARGETS = ("body", "lungs", "bones", "cavities")
_SQUARE_2D = np.zeros((3, 3, 3), dtype=bool)
_SQUARE_2D[1] = True


def _coarse_factors(grid: Grid, work_spacing_mm: float) -> tuple[int, int]:
    si, sj = grid.spacing[0], grid.spacing[1]
    return max(1, int(round(work_spacing_mm / sj))), max(1, int(round(work_spacing_mm / si)))


def _upsample(low: np.ndarray, fj: int, fi: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse in-plane mask back onto the full grid."""
    if fj == 1 and fi == 1:
        return low
    up = np.repeat(np.repeat(low, fj, axis=1), fi, axis=2)
    return up[:, : shape[1], : shape[2]]


def _voxels(cc: float, grid: Grid, fj: int = 1, fi: int = 1) -> int:
    return int(np.ceil(cc / (grid.voxel_volume_cc * fj * fi)))


def _restore_thin_parts(low: np.ndarray, opened: np.ndarray, core: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Give back to the body the thin parts the opening removed from it, but not the couch.

    The residue ``low & ~opened`` holds thin body parts (skin folds, ears, fingers) and thin
    external objects (couch shells, immobilisation plates and straps). A residue piece is put back,
    within the opening radius of the body, unless it touches something other than the body that
    survived the opening (a thick part of the couch) or most of it lies farther than the opening
    radius from the body (a couch shell or plate that merely touches the patient).
    """
    reach = dilate_2d(core, se)
    residue = low & ~opened
    rb = bbox(residue & reach)
    if rb is None:
        return core.copy()
    lab, n = ndi.label(residue)
    idx = np.flatnonzero(residue)  # work on the (few) residue voxels only
    labels = lab.ravel()[idx]
    is_near = reach.ravel()[idx]
    counts = np.bincount(labels, minlength=n + 1)
    near = np.bincount(labels[is_near], minlength=n + 1)
    foreign = opened & ~core
    touching = np.zeros(n + 1, dtype=bool)
    if foreign.any():
        touch_zone = dilate_2d(foreign, np.ones((1, 3, 3), dtype=bool)).ravel()[idx]
        touching[np.unique(labels[touch_zone])] = True
    keep = (near > 0) & ~touching & (near >= 0.5 * counts)
    keep[0] = False
    out = core.copy()
    out.ravel()[idx[keep[labels] & is_near]] = True
    return out


def _body_from_candidate(
    cand: np.ndarray, grid: Grid, opening_radius_mm: float, work_spacing_mm: float, fill_holes: bool
) -> np.ndarray:
    """Body outline from a full-resolution candidate mask (see module docstring)."""
    fj, fi = _coarse_factors(grid, work_spacing_mm)
    low = np.ascontiguousarray(cand[:, ::fj, ::fi])
    se = disk_2d(opening_radius_mm, (grid.spacing[1] * fj, grid.spacing[0] * fi))
    opened = open_2d(low, se) if se.sum() > 1 else low
    core = largest_component(opened, connectivity=1)
    if not core.any():
        return np.zeros(cand.shape, dtype=bool)
    low_body = _restore_thin_parts(low, opened, core, se) if se.sum() > 1 else core
    if fill_holes:
        low_body = fill_holes_per_slice(low_body)
    if fj == 1 and fi == 1:
        return low_body
    envelope = dilate_2d(low_body, _SQUARE_2D[1:2])
    interior = erode_2d(low_body, _SQUARE_2D[1:2])
    body = cand & _upsample(envelope, fj, fi, cand.shape)
    body |= _upsample(interior, fj, fi, cand.shape)
    return body


def body_ct(hu: np.ndarray, grid: Grid, config: ContourConfig | None = None) -> np.ndarray:
    """External outline (bool mask) of a CT in HU."""
    cfg = (config or ContourConfig()).body
    body = _body_from_candidate(
        hu > cfg.threshold_hu, grid, cfg.opening_radius_mm, cfg.work_spacing_mm, cfg.fill_holes_per_slice
    )
    _check_body(body, grid, cfg.min_volume_cc, f"no body above {cfg.threshold_hu:g} HU")
    return body


def _check_body(body: np.ndarray, grid: Grid, min_cc: float, what: str) -> None:
    vol = float(body.sum()) * grid.voxel_volume_cc
    if vol < min_cc:
        raise InputError(
            f"automatic External failed: {what} larger than {min_cc:g} cc was found (got {vol:.1f} cc); "
            "check the image (is it a CT in HU?) or lower body.threshold_hu / body.min_volume_cc "
            "in configs/contour.yaml",
            kind="contour",
        )


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the histogram that maximises the between-class variance."""
    v = values[np.isfinite(values)]
    if v.size == 0 or v.min() == v.max():
        raise InputError("the image is constant; no body outline can be found from its histogram", kind="contour")
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def body_non_ct(image: np.ndarray, grid: Grid, config: ContourConfig | None = None) -> np.ndarray:
    """Body outline of an MR or PET image: Otsu threshold of the smoothed image, then cleanup."""
    cfg = config or ContourConfig()
    nc = cfg.non_ct_body
    img = np.asarray(image, dtype=np.float32)
    if nc.smoothing_sigma_mm > 0:
        img = ndi.gaussian_filter(img, sigma=nc.smoothing_sigma_mm / grid.spacing[::-1], mode="nearest")
    sample = img[:: max(1, img.shape[0] // 64), ::2, ::2].ravel()
    thr = nc.otsu_scale * otsu_threshold(sample) + (1 - nc.otsu_scale) * float(np.percentile(sample, 1))
    body = _body_from_candidate(img > thr, grid, nc.opening_radius_mm, cfg.body.work_spacing_mm, True)
    _check_body(body, grid, cfg.body.min_volume_cc, f"no body above the Otsu threshold {thr:.3g}")
    return body


def _split_joined_lung(comp: np.ndarray, max_erosions: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one joined lung region into two (bool masks), by erosion then nearest-part assignment."""
    box = bbox(comp, (1, 1, 1))
    crop = comp[box]
    total = crop.sum()
    seeds = None
    eroded = crop
    for _ in range(max_erosions):
        eroded = ndi.binary_erosion(eroded, structure=_SQUARE_2D)
        lab, n = ndi.label(eroded)
        if n >= 2:
            counts = np.bincount(lab.ravel())
            counts[0] = 0
            order = np.argsort(counts)[::-1]
            if counts[order[1]] >= 0.1 * counts[order[0]]:
                seeds = np.zeros(crop.shape, dtype=np.int8)
                seeds[lab == order[0]] = 1
                seeds[lab == order[1]] = 2
                break
        if not eroded.any():
            break
    if seeds is None:
        # no neck found: cut at the thinnest sagittal plane in the middle third of the region
        prof = crop.sum(axis=(0, 1))
        nz = np.flatnonzero(prof)
        lo, hi = nz[0] + (nz[-1] - nz[0]) // 3, nz[0] + 2 * (nz[-1] - nz[0]) // 3 + 1
        cut = lo + int(np.argmin(prof[lo:hi]))
        a = crop.copy()
        a[:, :, cut:] = False
        b = crop & ~a
    else:
        _, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[idx[0], idx[1], idx[2]]
        a = crop & (nearest == 1)
        b = crop & (nearest == 2)
    if min(a.sum(), b.sum()) < 0.05 * total:
        raise InputError("automatic lungs: one joined air region could not be split into two lungs", kind="contour")
    out_a = np.zeros(comp.shape, dtype=bool)
    out_b = np.zeros(comp.shape, dtype=bool)
    out_a[box] = a
    out_b[box] = b
    return out_a, out_b


def lungs_ct(
    hu: np.ndarray, grid: Grid, body: np.ndarray, config: ContourConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) lung masks of a CT in HU inside a body mask; left = patient's left (+x LPS)."""
    cfg = config or ContourConfig()
    lc = cfg.lungs
    fj, fi = _coarse_factors(grid, cfg.body.work_spacing_mm)
    box = bbox(body)
    if box is None:
        raise InputError("automatic lungs need a non-empty External", kind="contour")
    # coarse candidate straight from the subsampled CT; full resolution only inside each lung's box
    low = np.zeros((hu.shape[0], -(-hu.shape[1] // fj), -(-hu.shape[2] // fi)), dtype=bool)
    lbox = (
        box[0],
        slice(-(-box[1].start // fj), -(-box[1].stop // fj)),
        slice(-(-box[2].start // fi), -(-box[2].stop // fi)),
    )
    sub = (box[0], slice(lbox[1].start * fj, box[1].stop, fj), slice(lbox[2].start * fi, box[2].stop, fi))
    low[lbox] = (hu[sub] < lc.threshold_hu) & body[sub]
    lab, n = ndi.label(low)
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    counts[0] = 0
    min_vox = _voxels(lc.min_volume_cc, grid, fj, fi)
    big = [int(x) for x in np.argsort(counts)[::-1] if counts[x] >= min_vox][:2]
    if not big:
        raise InputError(
            f"automatic lungs: no air-like region (< {lc.threshold_hu:g} HU) of at least {lc.min_volume_cc:g} cc "
            "inside the body; "
            "is this a thoracic CT? (set lungs.min_volume_cc in configs/contour.yaml for small patients)",
            kind="contour",
        )
    if len(big) == 2:
        parts = (lab == big[0], lab == big[1])
        del lab
    else:
        parts = _split_joined_lung(lab == big[0], lc.max_split_erosions)
    masks = []
    xs = []
    closing = disk_2d(lc.closing_radius_mm, (grid.spacing[1], grid.spacing[0])) if lc.closing_radius_mm > 0 else None
    pad_j = 2 + (0 if closing is None else int(np.ceil(closing.shape[1] / fj)))
    pad_i = 2 + (0 if closing is None else int(np.ceil(closing.shape[2] / fi)))
    nk, nj, ni = hu.shape
    for part in parts:
        lb = bbox(part, (0, pad_j, pad_i))
        assert lb is not None
        fb = (
            lb[0],
            slice(lb[1].start * fj, min(lb[1].stop * fj, nj)),
            slice(lb[2].start * fi, min(lb[2].stop * fi, ni)),
        )
        crop_shape = tuple(s_.stop - s_.start for s_ in fb)
        lpart = part[lb]
        cand = (hu[fb] < lc.threshold_hu) & body[fb]
        if fj > 1 or fi > 1:
            env = _upsample(dilate_2d(lpart, _SQUARE_2D[1:2]), fj, fi, crop_shape)
            inner = _upsample(erode_2d(lpart, _SQUARE_2D[1:2]), fj, fi, crop_shape)
            full = (cand & env) | (inner & body[fb])
        else:
            full = lpart & cand
        if closing is not None and closing.sum() > 1:
            full = (close_2d(full, closing) | full) & body[fb]
        if lc.fill_holes_per_slice:
            full = fill_holes_per_slice(full)
        masks.append((fb, full))
        # centroid x (LPS) of the coarse part, from its column profile
        prof = lpart.sum(axis=(0, 1), dtype=np.int64)
        i_mean = (np.arange(lb[2].start, lb[2].stop) * fi * prof).sum() / max(prof.sum(), 1)
        k_mean = (lb[0].start + lb[0].stop - 1) / 2.0
        j_mean = (lb[1].start + lb[1].stop - 1) / 2.0 * fj
        xs.append(float(grid.index_to_world(np.array([k_mean, j_mean, i_mean]))[0]))
    # left = larger mean x (LPS)
    (lb_, left_c), (rb_, right_c) = (masks[0], masks[1]) if xs[0] > xs[1] else (masks[1], masks[0])
    left = np.zeros(hu.shape, dtype=bool)
    right = np.zeros(hu.shape, dtype=bool)
    left[lb_] = left_c
    right[rb_] = right_c
    ov = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(lb_, rb_))
    if all(o.stop > o.start for o in ov):
        right[ov] &= ~left[ov]  # the closing may overlap where the lungs nearly touch
    return left, right


def bones_ct(hu: np.ndarray, grid: Grid, body: np.ndarray, config: ContourConfig | None = None) -> np.ndarray:
    """Bone mask of a CT in HU inside a body mask."""
    bc = (config or ContourConfig()).bones
    box = bbox(body)
    if box is None:
        raise InputError("automatic bones need a non-empty External", kind="contour")
    cand = np.zeros(hu.shape, dtype=bool)
    cand[box] = (hu[box] > bc.threshold_hu) & body[box]
    bones = remove_small_components(cand, _voxels(bc.min_component_cc, grid), connectivity=3)
    if bc.fill_holes_per_slice:
        bones = fill_holes_per_slice(bones)
    return bones


def cavities_ct(
    hu: np.ndarray, grid: Grid, body: np.ndarray, lungs: np.ndarray | None, config: ContourConfig | None = None
) -> np.ndarray:
    """Air cavities inside the body that are not lung."""
    cc = (config or ContourConfig()).cavities
    box = bbox(body)
    if box is None:
        raise InputError("automatic air cavities need a non-empty External", kind="contour")
    cand = np.zeros(hu.shape, dtype=bool)
    cand[box] = (hu[box] < cc.threshold_hu) & body[box]
    if lungs is not None:
        cand &= ~lungs
    return remove_small_components(cand, _voxels(cc.min_component_cc, grid), connectivity=1)


def auto_contour(
    image: Volume,
    modality: str = "CT",
    targets: tuple[str, ...] = AUTO_TARGETS,
    config: ContourConfig | None = None,
    body: np.ndarray | None = None,
    strict: bool = True,
    notes: list[str] | None = None,
) -> list[tuple[str, StructureKind, tuple[int, int, int], np.ndarray]]:
    """Automatic structures of one image: list of (TG-263 name, kind, colour RGB, mask on ``image.grid``).

    ``targets`` is any of ``body``, ``lungs``, ``bones``, ``cavities``; ``body`` may pass an existing
    External mask so that it is not recomputed. CT only for lungs, bones and cavities. With
    ``strict=False`` (the default set of a request), lungs that are not found (a pelvis or head
    CT) are skipped with a line in ``notes`` instead of an error; non-CT images then give the body
    only.
    """
    notes = notes if notes is not None else []
    cfg = config or ContourConfig()
    unknown = set(targets) - set(AUTO_TARGETS)
    if unknown:
        raise InputError(
            f"unknown automatic structure(s) {sorted(unknown)}; choose from {list(AUTO_TARGETS)}", kind="contour"
        )
    mod = (modality or "CT").upper()
    if mod not in {"CT", "MR", "PT", "PET"}:
        raise InputError(f"automatic delineation supports CT, MR and PET images, not {modality!r}", kind="contour")
    if mod != "CT":
        others = [t for t in targets if t != "body"]
        if others and not strict:
            notes.append(f"{', '.join(others)}: not supported for {mod}, only External delineated")
            targets = tuple(t for t in targets if t == "body")
            others = []
        if others:
            raise InputError(
                f"automatic {', '.join(others)} not supported for {'MR' if mod == 'MR' else 'PET'}: "
                "only the body outline (External) is delineated automatically on this modality; "
                "use a CT, or draw these structures semi-automatically",
                kind="contour",
            )
    arr = image.array
    grid = image.grid
    out: list[tuple[str, StructureKind, tuple[int, int, int], np.ndarray]] = []
    if body is None or "body" in targets:
        body = body_ct(arr, grid, cfg) if mod == "CT" else body_non_ct(arr, grid, cfg)
    if "body" in targets:
        out.append((cfg.body.name, StructureKind.external, (0, 255, 0), body))
    lungs_union = None
    if "lungs" in targets:
        try:
            left, right = lungs_ct(arr, grid, body, cfg)
        except InputError as exc:
            if strict:
                raise
            notes.append(f"no lungs: {exc.message}")
        else:
            out.append((cfg.lungs.name_left, StructureKind.organ, (0, 170, 255), left))
            out.append((cfg.lungs.name_right, StructureKind.organ, (255, 170, 0), right))
            lungs_union = left | right
    if "bones" in targets:
        out.append((cfg.bones.name, StructureKind.organ, (230, 230, 200), bones_ct(arr, grid, body, cfg)))
    if "cavities" in targets:
        if lungs_union is None and "lungs" not in targets:
            try:
                left, right = lungs_ct(arr, grid, body, cfg)
                lungs_union = left | right
            except InputError:
                lungs_union = None
        out.append(
            (cfg.cavities.name, StructureKind.other, (120, 120, 255), cavities_ct(arr, grid, body, lungs_union, cfg))
        )
    return out
