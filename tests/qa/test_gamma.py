"""Gamma index against analytic cases (Low et al. 1998)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayrt.domain.errors import InputError
from rayrt.imaging.volume import Grid, Volume
from rayrt.qa.gamma import GammaCriteria, gamma_index, load_dose, save_dose_npy, search_offsets


def _ramp(grid: Grid, slope_gy_per_mm: float, offset_gy: float, shift_mm: float = 0.0) -> np.ndarray:
    """D(x) = offset + slope * (x - shift): linear, so trilinear interpolation is exact."""
    x = grid.voxel_centers_mm()[..., 0]
    return offset_gy + slope_gy_per_mm * (x - shift_mm)


REF = Grid(shape=(5, 6, 21), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(-10.0, -3.0, -2.0))
# the evaluated dose lives on a larger grid with another spacing and origin (it is interpolated)
EVAL = Grid(shape=(14, 14, 30), spacing_mm=(1.7, 1.3, 1.1), origin_mm=(-25.0, -9.0, -9.0))


def test_offsets_sorted_and_inside_sphere():
    off, d2 = search_offsets(10, 3.0)
    assert np.all(np.diff(d2) >= 0)
    assert d2[0] == 0 and np.allclose(off[0], 0)
    assert d2.max() <= 9.0 + 1e-9
    assert np.allclose((off**2).sum(axis=1), d2)


@pytest.mark.parametrize("shift_mm,dta_mm", [(1.0, 2.0), (0.6, 2.0), (2.4, 3.0), (-1.5, 2.5)])
def test_pure_shift_gamma_is_shift_over_dta(shift_mm, dta_mm):
    """A steep ramp shifted by s mm with a negligible dose criterion: gamma = |s| / DTA."""
    ref = _ramp(REF, 0.1, 3.0)
    ev = _ramp(EVAL, 0.1, 3.0, shift_mm=shift_mm)
    r = gamma_index(Volume(ref, REF), Volume(ev, EVAL), dose_pct=0.01, dta_mm=dta_mm, cutoff_pct=0)
    assert r.summary.n_evaluated == REF.num_voxels
    assert np.allclose(r.gamma, abs(shift_mm) / dta_mm, atol=0.01)
    assert r.summary.p95_gamma == pytest.approx(abs(shift_mm) / dta_mm, abs=0.01)


def test_shift_with_finite_dose_criterion_matches_closed_form():
    """Ramp of slope a shifted by s: gamma = |s| / sqrt(DTA² + (ΔD/a)²) (point-to-line distance)."""
    a, s, dta, dd_pct = 0.1, 1.5, 2.0, 3.0
    ref = _ramp(REF, a, 3.0)
    ev = _ramp(EVAL, a, 3.0, shift_mm=s)
    r = gamma_index(Volume(ref, REF), Volume(ev, EVAL), dose_pct=dd_pct, dta_mm=dta, cutoff_pct=0)
    delta_d = dd_pct / 100 * ref.max()
    expected = s / np.sqrt(dta**2 + (delta_d / a) ** 2)
    assert np.allclose(r.gamma, expected, atol=0.015)
    # local: ΔD varies with the local reference dose
    rl = gamma_index(Volume(ref, REF), Volume(ev, EVAL), dose_pct=dd_pct, dta_mm=dta, cutoff_pct=0, local=True)
    expected_local = s / np.sqrt(dta**2 + (dd_pct / 100 * ref / a) ** 2)
    assert np.allclose(rl.gamma, expected_local, atol=0.015)


def _two_level(grid: Grid, high: float, low: float) -> np.ndarray:
    x = grid.voxel_centers_mm()[..., 0]
    return np.where(x < 0, high, low)


@pytest.mark.parametrize("scale", [1.02, 0.96, 1.045])
def test_pure_scaling_global_vs_local(scale):
    """Eval = k * ref on a two-level field: far from the step, global gamma = |k-1| D/(dd D_max),
    local gamma = |k-1|/dd everywhere."""
    g = Grid(shape=(3, 3, 41), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(-20.0, -1.0, -1.0))
    ref = _two_level(g, 2.0, 0.5)
    ev = ref * scale
    x = g.voxel_centers_mm()[..., 0]
    far = np.abs(x) > 3 * 2.0 + 1
    rg = gamma_index(Volume(ref, g), Volume(ev, g), dose_pct=3, dta_mm=2, cutoff_pct=10)
    exp_g = abs(scale - 1) * ref / (0.03 * 2.0)
    assert np.allclose(rg.gamma[far], exp_g[far], atol=1e-4)
    rl = gamma_index(Volume(ref, g), Volume(ev, g), dose_pct=3, dta_mm=2, cutoff_pct=10, local=True)
    assert np.allclose(rl.gamma[far], abs(scale - 1) / 0.03, atol=1e-4)
    # local is never more lenient than global where the dose is below the normalisation
    assert np.all(rl.gamma[far] >= rg.gamma[far] - 1e-6)
    expected_pass = 100.0 * np.mean(exp_g <= 1.0)
    if abs(scale - 1) / 0.03 * 0.25 <= 1 < abs(scale - 1) / 0.03:  # high region fails, low passes
        assert rg.summary.pass_rate_pct == pytest.approx(expected_pass, abs=100.0 * 8 / g.num_voxels)


def test_cutoff_excludes_low_dose():
    g = Grid(shape=(1, 1, 10), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))
    ref = np.linspace(0.0, 9.0, 10).reshape(1, 1, 10)
    r = gamma_index(Volume(ref, g), Volume(ref.copy(), g), cutoff_pct=35)
    assert r.summary.n_evaluated == 6  # 4..9 >= 3.15
    assert np.isnan(r.gamma[0, 0, :4]).all()
    assert r.summary.pass_rate_pct == 100.0 and r.summary.max_gamma == pytest.approx(0.0)


def test_rotated_evaluation_grid_gives_the_same_gamma():
    """The evaluated dose on a grid with flipped axes (another orientation) is sampled in world mm."""
    rng = np.random.default_rng(0)
    g = Grid(shape=(6, 7, 8), spacing_mm=(2.0, 2.5, 3.0), origin_mm=(-7.0, -7.5, -7.5))
    ref = 1.0 + rng.uniform(0, 0.2, g.shape)
    ev = ref * 1.02 + rng.normal(0, 0.01, g.shape)
    # the same samples on a grid whose i and j axes run the other way
    flip_dir = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
    lo = g.index_to_world(np.array([0, g.shape[1] - 1, g.shape[2] - 1]))
    g2 = Grid(shape=g.shape, spacing_mm=g.spacing_mm, origin_mm=tuple(lo), direction=flip_dir)
    ev2 = ev[:, ::-1, ::-1].copy()
    a = gamma_index(Volume(ref, g), Volume(ev, g), dose_pct=2, dta_mm=2, cutoff_pct=0)
    b = gamma_index(Volume(ref, g), Volume(ev2, g2), dose_pct=2, dta_mm=2, cutoff_pct=0)
    assert np.allclose(a.gamma, b.gamma, atol=1e-5)


def test_two_d_plane():
    """A single-slice dose is evaluated in its plane (no out-of-plane search)."""
    g = Grid(shape=(1, 5, 30), spacing_mm=(1.0, 1.0, 3.0), origin_mm=(-15.0, -2.0, 0.0))
    ref = _ramp(g, 0.2, 4.0)
    ev = _ramp(g, 0.2, 4.0, shift_mm=1.0)
    r = gamma_index(Volume(ref, g), Volume(ev, g), dose_pct=0.01, dta_mm=2, cutoff_pct=0)
    inner = r.gamma[0, :, :-2]  # the rightmost voxels would need points outside the evaluated grid
    assert np.allclose(inner, 0.5, atol=0.01)


def test_bad_input():
    g = Grid(shape=(2, 2, 2), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    with pytest.raises(InputError):
        gamma_index(Volume(np.zeros(g.shape), g), Volume(np.ones(g.shape), g))
    with pytest.raises(InputError):
        gamma_index(Volume(np.full(g.shape, np.nan), g), Volume(np.ones(g.shape), g))
    with pytest.raises(ValueError):
        GammaCriteria(dose_pct=-1)


def _write_rtdose(path, dose_gy: np.ndarray, grid: Grid) -> None:
    """A minimal axis-aligned RTDOSE (16-bit) written with pydicom, for the file-reading path."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTDOSE"
    ds.ImagePositionPatient = list(grid.origin_mm)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [grid.spacing_mm[1], grid.spacing_mm[0]]
    ds.GridFrameOffsetVector = [k * grid.spacing_mm[2] for k in range(grid.shape[0])]
    ds.NumberOfFrames = grid.shape[0]
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    scale = float(dose_gy.max()) / 60000.0
    ds.DoseGridScaling = scale
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.PixelData = np.round(dose_gy / scale).astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_cli_gamma_npy_and_rtdose(tmp_path, capsys):
    import rayrt.cli  # noqa: F401  (registers commands)
    from rayrt.cli.app import run

    g = Grid(shape=(4, 12, 16), spacing_mm=(2.0, 2.0, 3.0), origin_mm=(-15.0, -11.0, -4.5))
    ref = _ramp(g, 0.05, 2.0)
    ev = ref * 1.05  # 5 % too high everywhere: fails 3 % locally, partly passes globally
    save_dose_npy(Volume(ref, g), tmp_path / "ref.npy")
    np.save(tmp_path / "dose.npy", ev.astype(np.float32))
    (tmp_path / "dose_grid.json").write_text(g.model_dump_json())
    _write_rtdose(tmp_path / "ref.dcm", ref, g)
    assert load_dose(tmp_path / "ref.dcm").grid.same_geometry(g)
    assert np.allclose(load_dose(tmp_path / "ref.dcm").array, ref, atol=ref.max() / 50000)

    assert run(["gamma", str(tmp_path / "ref.dcm"), str(tmp_path / "dose.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = gamma_index(Volume(ref, g), Volume(ev, g)).summary
    assert out["pass_rate_pct"] == pytest.approx(direct.pass_rate_pct, abs=0.5)
    assert 0 < out["pass_rate_pct"] < 100
    assert (
        run(["gamma", str(tmp_path / "ref.npy"), str(tmp_path / "dose.npy"), "--local", "--dd", "3", "--dta", "2"]) == 0
    )
    text = capsys.readouterr().out
    local = gamma_index(Volume(ref, g), Volume(ev, g), local=True).summary
    assert f"pass rate        : {local.pass_rate_pct:.2f} %" in text
    assert local.pass_rate_pct < direct.pass_rate_pct  # local 3 % is stricter than global on this ramp
    assert run(["gamma", str(tmp_path / "missing.npy"), str(tmp_path / "dose.npy")]) == 2
    (tmp_path / "nogrid.npy").write_bytes((tmp_path / "dose.npy").read_bytes())
    (tmp_path / "dose_grid.json").unlink()
    assert run(["gamma", str(tmp_path / "ref.npy"), str(tmp_path / "dose.npy")]) == 2
    assert "grid" in capsys.readouterr().err


def test_shifted_grid_fast_path_agrees_with_the_general_kernel(monkeypatch):
    """The evaluated grid = the reference grid shifted by a fraction of a voxel: one shared
    interpolation table (fast path) gives the same gamma as locating every point on the fly."""
    from scipy.ndimage import gaussian_filter

    import rayrt.qa.gamma as gm

    rng = np.random.default_rng(5)
    gr = Grid(shape=(8, 16, 16), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(-18.75, -18.75, -8.75))
    ge = Grid(shape=(10, 18, 18), spacing_mm=(2.5, 2.5, 2.5), origin_mm=(-21.3, -20.9, -11.0))
    ev = gaussian_filter(rng.uniform(0.5, 2.0, ge.shape), 1.5)
    ref = Volume(ev, ge).resample(gr).array * (1 + rng.normal(0, 0.02, gr.shape))
    calls = []
    monkeypatch.setattr(gm, "_cell_tables", lambda off, real=gm._cell_tables: calls.append(1) or real(off))
    fast = gamma_index(Volume(ref, gr), Volume(ev, ge), dose_pct=2, dta_mm=2, cutoff_pct=0)
    assert calls == [1]
    # an evaluated grid of another spacing takes the general kernel; compare on the same data
    shifted_general = gm._get_kernel()[0]
    base = ge.world_to_index(gr.index_to_world(np.argwhere(np.ones(gr.shape)).astype(float)))
    off, d2 = gm.search_offsets(10, 3.0)
    off_kji = np.ascontiguousarray(((off * 2.0) @ ge.direction_matrix / ge.spacing)[:, ::-1])
    out = np.empty(base.shape[0])
    inv = np.full(base.shape[0], 1.0 / (0.02 * ref.max()))
    shifted_general(
        np.ascontiguousarray(base), np.ascontiguousarray(ref.ravel()), inv, np.ascontiguousarray(ev), off_kji, d2, out
    )
    assert np.allclose(fast.gamma.ravel(), out, atol=1e-5)
    assert 0 < fast.summary.pass_rate_pct < 100
