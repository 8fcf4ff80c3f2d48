"""Beamlets for every target: each beam's bixels cover the union of the order's targets (the
prescription target and every structure with a minimum-dose-type objective) and of its ``cover``
list, plus the margin; the isocenter sits at their common centre of mass."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.study import make_small_study

from rayrt.domain.errors import InputError
from rayrt.domain.order import parse_order
from rayrt.domain.planning import PlanningRequest
from rayrt.pipeline import run_recipe

REQ = PlanningRequest(num_beams=5, dose_grid_mm=5.0, bixel_mm=5.0)


def _order(**extra) -> dict:
    return {
        "name": "two dose levels",
        "prescription": {"target": "PTV", "total_dose_gy": 60.0, "fractions": 30},
        "objectives": [{"structure": "PTV", "kind": "squared_deviation", "dose_gy": 60.0, "priority": 100}],
        **extra,
    }


@pytest.fixture(scope="module")
def study():
    return make_small_study(with_dose=False)


def _coverage(res, mask: np.ndarray) -> float:
    """Share of the voxels of ``mask`` (dose grid) that the first beam (gantry 0, anterior; the two
    structures lie side by side across it) irradiates directly: row sum of that beam's Dij columns
    at least a quarter of the median row sum inside the prescription target."""
    geo = res["geometry"]
    dij = res["dij"].matrix[:, res["beamlet_set"].slices()[0]].tocsr()
    rows = np.asarray(dij.sum(axis=1)).ravel()
    ptv = rows[geo.dose_masks["PTV"].ravel()]
    return float(np.mean(rows[mask.ravel()] >= 0.25 * np.median(ptv)))


def test_a_second_target_gets_beamlets(study):
    only_ptv = run_recipe(study, parse_order(_order()), REQ, until="dij")
    second = _order()
    second["objectives"].append(
        {"structure": "Core", "kind": "min_dvh", "dose_gy": 50.0, "volume_pct": 98, "priority": 100}
    )
    both = run_recipe(study, parse_order(second), REQ, until="dij")
    assert both["geometry"].targets == ["PTV", "Core"] and only_ptv["geometry"].targets == ["PTV"]
    core, ptv = both["geometry"].dose_masks["Core"], both["geometry"].dose_masks["PTV"]
    assert _coverage(only_ptv, core) < 0.9
    assert _coverage(both, core) == pytest.approx(1.0) and _coverage(both, ptv) == pytest.approx(1.0)
    assert both["dij"].num_bixels > only_ptv["dij"].num_bixels
    # the isocenter moves to the targets' common centre of mass (Core lies at -x of the PTV)
    assert both["geometry"].isocenter_mm[0] < only_ptv["geometry"].isocenter_mm[0]


def test_the_order_can_ask_to_cover_a_structure(study):
    covered = run_recipe(study, parse_order(_order(cover=["Core"])), REQ, until="dij")
    assert covered["geometry"].targets == ["PTV", "Core"]
    assert _coverage(covered, covered["geometry"].dose_masks["Core"]) == pytest.approx(1.0)
    with pytest.raises(InputError, match="Nodes"):
        run_recipe(study, parse_order(_order(cover=["Nodes"])), REQ, until="dij")
