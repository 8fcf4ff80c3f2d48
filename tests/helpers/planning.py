"""The one set of fast planning settings the tests plan with: coarse, few iterations, one
conversion attempt. Overrides of configs/planning.yaml (PlanningRequest fields), like a job's
``options``; the engine itself (Dij cut-off and threshold, kernels) stays at its defaults."""

from __future__ import annotations

from typing import Any

FAST_PLANNING: dict[str, Any] = {
    "num_beams": 5,
    "dose_grid_mm": 5.0,
    "bixel_mm": 5.0,
    "fmo_iterations": 40,
    "dao_rounds": 1,
    "dao_iterations": 8,
    "max_segments": 5,
    "qa_bixel_mm": 5.0,
    "conversion_options": {
        "max_attempts": 1,
        "fmo_iterations": 30,
        "dao_rounds": 1,
        "dao_iterations": 8,
        "mu_refit_iterations": 20,
    },
}
