"""Where the optimiser aims: organ terms a margin below their clinical goals, the target's terms
following the normalisation (idempotently), and the goals kept for QA and the export."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from rayrt.domain.order import parse_order
from rayrt.optimize.problem import build_problem, organ_aims

ORDER = parse_order(
    {
        "name": "aims",
        "prescription": {"target": "PTV", "total_dose_gy": 60.0, "fractions": 30},
        "objectives": [
            {"structure": "PTV", "kind": "squared_deviation", "dose_gy": 60.0, "priority": 100},
            {"structure": "PTV", "kind": "min_dvh", "dose_gy": 57.0, "volume_pct": 95, "priority": 100},
            {"structure": "PTV", "kind": "max_dvh", "dose_gy": 64.0, "volume_pct": 5, "priority": 100},
            {"structure": "Cord", "kind": "max_dose", "dose_gy": 45.0, "priority": 100},
            {"structure": "Cord", "kind": "squared_overdose", "dose_gy": 40.0, "priority": 10},
            {"structure": "Parotid", "kind": "mean_dose", "dose_gy": 3.0, "priority": 10},
            {"structure": "Parotid", "kind": "max_dose", "dose_gy": 50.0, "hard": True},
            {"structure": "BODY", "kind": "squared_overdose", "dose_gy": 40.0, "priority": 10},
        ],
    }
)


def test_organ_terms_aim_below_their_goals():
    aimed = organ_aims(list(ORDER.objectives), ORDER, 10.0)  # 10 % of 60 Gy = 6 Gy
    by = {(s.structure, s.kind.value, s.hard): s.dose_gy for s in aimed}
    assert by[("Cord", "max_dose", False)] == pytest.approx(39.0)
    assert by[("Cord", "squared_overdose", False)] == pytest.approx(34.0)
    assert by[("Parotid", "mean_dose", False)] == 0.0  # never below 0 Gy
    # targets, hard constraints and structures without a clinical goal keep their doses
    assert by[("PTV", "max_dvh", False)] == 64.0 and by[("PTV", "min_dvh", False)] == 57.0
    assert by[("Parotid", "max_dose", True)] == 50.0
    assert by[("BODY", "squared_overdose", False)] == 40.0
    assert organ_aims(list(ORDER.objectives), ORDER, 0.0) == list(ORDER.objectives)


def _problem(margin: float):
    rng = np.random.default_rng(3)
    n_vox, n_bix = 40, 6
    dij = sp.csc_matrix(rng.uniform(0.0, 1.0, (n_vox, n_bix)).astype(np.float32))
    masks = {
        "PTV": np.arange(n_vox) < 10,
        "Cord": (np.arange(n_vox) >= 10) & (np.arange(n_vox) < 20),
        "Parotid": (np.arange(n_vox) >= 20) & (np.arange(n_vox) < 30),
        "BODY": np.ones(n_vox, bool),
    }
    return build_problem(ORDER, masks, dij, organ_aim_margin_pct=margin)


def test_problem_keeps_the_goals_while_aiming_elsewhere():
    p = _problem(10.0)
    cord = next(o for o in p.objectives if o.structure == "Cord" and o.kind == "max_dose")
    assert cord.dose_gy == pytest.approx(39.0) and cord.goal_gy == 45.0
    plain = _problem(0.0)
    assert [o.dose_gy for o in plain.objectives] == [o.goal_gy for o in plain.objectives]


def test_target_aims_follow_the_normalisation_idempotently():
    p = _problem(10.0)
    p.set_target_aims(1.05)
    p.set_target_aims(1.05)  # never compounded
    ptv = {o.kind: o for o in p.objectives if o.structure == "PTV"}
    assert ptv["squared_deviation"].dose_gy == pytest.approx(63.0)
    assert ptv["min_dvh"].dose_gy == pytest.approx(59.85)
    assert ptv["max_dvh"].dose_gy == 64.0  # an upper bound of the target is a goal, not an aim that follows
    cord = next(o for o in p.objectives if o.structure == "Cord" and o.kind == "max_dose")
    assert cord.dose_gy == pytest.approx(39.0)
    p.set_target_aims(1.0)
    assert ptv["squared_deviation"].dose_gy == 60.0 and ptv["min_dvh"].dose_gy == 57.0


def test_a_voxel_in_two_targets_belongs_to_the_higher_dose_level():
    """Simultaneous boost: PTV56 overlaps PTV70; its soft terms skip the overlap, which PTV70's own."""
    order = parse_order(
        {
            "name": "sib",
            "prescription": {"target": "PTV56", "total_dose_gy": 56.0, "fractions": 28},
            "objectives": [
                {"structure": "PTV56", "kind": "squared_deviation", "dose_gy": 56.0, "priority": 100},
                {"structure": "PTV70", "kind": "squared_deviation", "dose_gy": 70.0, "priority": 100},
            ],
        }
    )
    n = 20
    dij = sp.csc_matrix(np.ones((n, 3), np.float32))
    masks = {"PTV56": np.arange(n) < 12, "PTV70": (np.arange(n) >= 8) & (np.arange(n) < 16)}
    p = build_problem(order, masks, dij)
    rows = {o.structure: set(p.dij.voxel_index[o.voxels].tolist()) for o in p.objectives}
    assert rows["PTV70"] == set(range(8, 16))
    assert rows["PTV56"] == set(range(0, 8))  # the overlap 8..11 goes to the higher level
