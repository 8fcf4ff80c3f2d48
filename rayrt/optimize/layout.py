"""Beamlet layouts: where each beamlet (bixel) of a beam sits in the beam's eye view.

A :class:`BeamletLayout` is the optimiser's view of a beam's beamlet grid at the isocenter plane
(mm, IEC 61217 beam-limiting-device frame): rows stacked along Y (``row_edges_mm``, increasing),
columns along X, the leaf-travel direction (``col_edges_mm``, increasing), and
``beamlet_index[row, col]`` = the beamlet's column in this beam's block of the Dij (-1: none).

It also maps fluence between beamlet rows and an MLC's leaf pairs: leaf pair ``p`` sees the
overlap-length-weighted mean of the rows it covers (resampling when beamlet rows and leaf widths
differ), and a beamlet row receives the overlap-weighted share of every leaf pair covering it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrt.domain.machine import MLCModel

__all__ = ["BeamletLayout", "layout_from_beamlets", "overlap_matrix"]


@dataclass
class BeamletLayout:
    row_edges_mm: np.ndarray  # (nrows + 1,) Y edges, increasing
    col_edges_mm: np.ndarray  # (ncols + 1,) X edges, increasing
    beamlet_index: np.ndarray  # (nrows, ncols) int, -1 where there is no beamlet

    def __post_init__(self):
        self.row_edges_mm = np.asarray(self.row_edges_mm, dtype=float)
        self.col_edges_mm = np.asarray(self.col_edges_mm, dtype=float)
        self.beamlet_index = np.asarray(self.beamlet_index, dtype=np.int64)
        if self.beamlet_index.shape != (self.row_edges_mm.size - 1, self.col_edges_mm.size - 1):
            raise ValueError("beamlet_index must be (len(row_edges)-1, len(col_edges)-1)")

    @property
    def shape(self) -> tuple[int, int]:
        return self.beamlet_index.shape

    @property
    def num_beamlets(self) -> int:
        return int((self.beamlet_index >= 0).sum())

    @property
    def col_widths_mm(self) -> np.ndarray:
        return np.diff(self.col_edges_mm)

    @property
    def row_heights_mm(self) -> np.ndarray:
        return np.diff(self.row_edges_mm)

    def to_map(self, w_beam: np.ndarray) -> np.ndarray:
        """Fluence map (nrows, ncols) from this beam's beamlet weights (0 where no beamlet)."""
        m = np.zeros(self.shape)
        ok = self.beamlet_index >= 0
        m[ok] = np.asarray(w_beam)[self.beamlet_index[ok]]
        return m

    def from_map(self, fmap: np.ndarray) -> np.ndarray:
        """This beam's beamlet weights from a fluence map."""
        ok = self.beamlet_index >= 0
        w = np.zeros(int(self.beamlet_index.max()) + 1 if ok.any() else 0)
        w[self.beamlet_index[ok]] = np.asarray(fmap)[ok]
        return w

    def pair_row_weights(self, mlc: MLCModel) -> np.ndarray:
        """Y[p, r] = overlap length (mm) of leaf pair p with beamlet row r divided by the row height:
        the fraction of row r covered by pair p (leaf pair -> beamlet row resampling)."""
        return overlap_matrix(mlc.boundaries, self.row_edges_mm) / self.row_heights_mm[None, :]

    def rows_to_pairs(self, fmap: np.ndarray, mlc: MLCModel) -> tuple[np.ndarray, np.ndarray]:
        """Resample a fluence map onto the MLC's leaf pairs.

        Returns ``(pair_fluence[k, ncols], pair_ids[k])`` for the k leaf pairs that overlap the
        beamlet rows; each value is the overlap-weighted mean over the rows the pair covers.
        """
        ov = overlap_matrix(mlc.boundaries, self.row_edges_mm)  # (P, R) mm
        tot = ov.sum(axis=1)
        ids = np.flatnonzero(tot > 1e-6 * max(float(np.min(mlc.leaf_widths_mm)), 1e-9))
        pf = (ov[ids] @ np.asarray(fmap, dtype=float)) / tot[ids, None]
        return pf, ids


def overlap_matrix(edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    """O[p, r] = length (mm) of the overlap of interval p of ``edges_a`` with interval r of ``edges_b``."""
    a0, a1 = edges_a[:-1, None], edges_a[1:, None]
    b0, b1 = edges_b[None, :-1], edges_b[None, 1:]
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def layout_from_beamlets(beamlets) -> BeamletLayout:
    """Adapt a beamlet grid of :mod:`rayrt.dose.geometry` (or a BeamletLayout) to a BeamletLayout."""
    if isinstance(beamlets, BeamletLayout):
        return beamlets
    for names in (("row_edges_mm", "col_edges_mm", "beamlet_index"),):
        if all(hasattr(beamlets, n) for n in names):
            return BeamletLayout(*(np.asarray(getattr(beamlets, n)) for n in names))
    return _adapt_dose_beamlet_grid(beamlets)


def _adapt_dose_beamlet_grid(bg) -> BeamletLayout:
    """:class:`rayrt.dose.geometry.BeamletGrid`: rows index ``row_edges_mm`` (leaf pairs, halved for
    dual-layer MLCs), columns are numbers ``c`` with edges at ``column_offset_mm + c * bixel_width_mm``
    (the grid's ``column_edge_mm``; offset 0 when the grid has none); bixel ``n`` of the beam's Dij
    block is at (rows[n], cols[n]). Only the rows in use are kept."""
    for n in ("rows", "cols", "row_edges_mm", "bixel_width_mm"):
        if not hasattr(bg, n):
            raise TypeError(f"cannot read a beamlet layout from {type(bg).__name__} (no '{n}')")
    rows = np.asarray(bg.rows, dtype=np.int64)
    cols = np.asarray(bg.cols, dtype=np.int64)
    edges = np.asarray(bg.row_edges_mm, dtype=float)
    w = float(bg.bixel_width_mm)
    off = float(getattr(bg, "column_offset_mm", 0.0))
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    idx = np.full((r1 - r0, c1 - c0), -1, dtype=np.int64)
    idx[rows - r0, cols - c0] = np.arange(rows.size)
    return BeamletLayout(edges[r0 : r1 + 1], off + np.arange(c0, c1 + 1) * w, idx)
