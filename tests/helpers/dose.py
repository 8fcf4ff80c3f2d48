"""Shared checks of the dose tests (imported by test modules, not collected)."""

import numpy as np

from rayrt.dose.aperture import segment_transmission, segment_transmission_gradient


def leaf_gradient_vs_finite_differences(bg, seg, machine, h: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Assert that d(transmission)/d(leaf tip) equals central finite differences for both banks;
    returns the analytic gradients (x1, x2)."""
    g1, g2 = segment_transmission_gradient(bg, seg, machine)
    for which, g in (("x1_mm", g1), ("x2_mm", g2)):
        up = seg.model_copy(update={which: [v + h for v in getattr(seg, which)]})
        dn = seg.model_copy(update={which: [v - h for v in getattr(seg, which)]})
        fd = (segment_transmission(bg, up, machine) - segment_transmission(bg, dn, machine)) / (2 * h)
        assert np.allclose(g, fd, atol=1e-6)
    return g1, g2
