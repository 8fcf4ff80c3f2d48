"""A standard Hounsfield-unit to relative-electron-density curve (piecewise linear) and its inverse.

Typical of a 120 kVp CT calibrated with a tissue-characterisation phantom: air -1000 HU ->
0.001, lung -800 HU -> 0.19, adipose -100 HU -> 0.93, water 0 HU -> 1.0, muscle 40 HU -> 1.04,
cortical bone 1000 HU -> 1.52, 3000 HU -> 2.6. It is strictly increasing, so it can be inverted
(used to give CT numbers to phantoms stored as density only). A machine's own calibration
should replace it for clinical dose.
"""

from __future__ import annotations

import numpy as np

STANDARD_HU_TO_RED: tuple[tuple[float, float], ...] = (
    (-1024.0, 0.0),
    (-1000.0, 0.001),
    (-800.0, 0.19),
    (-100.0, 0.93),
    (0.0, 1.0),
    (40.0, 1.04),
    (1000.0, 1.52),
    (3071.0, 2.6),
)

__all__ = ["STANDARD_HU_TO_RED", "hu_to_red", "red_to_hu"]


def hu_to_red(hu: np.ndarray, curve=STANDARD_HU_TO_RED) -> np.ndarray:
    """Relative electron density (water = 1) of Hounsfield units, clamped at the curve's ends."""
    c = np.asarray(curve, dtype=float)
    return np.interp(np.asarray(hu, dtype=float), c[:, 0], c[:, 1]).astype(np.float32)


def red_to_hu(red: np.ndarray, curve=STANDARD_HU_TO_RED) -> np.ndarray:
    """Hounsfield units of relative electron densities: the inverse of :func:`hu_to_red`."""
    c = np.asarray(curve, dtype=float)
    return np.interp(np.asarray(red, dtype=float), c[:, 1], c[:, 0]).astype(np.float32)
