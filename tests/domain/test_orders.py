"""Domain model: orders validate with messages that name the field and the allowed values."""

import json

import pytest

from rayrt.domain import InputError, MedicalOrder, load_order
from rayrt.domain.order import parse_order
from rayrt.imaging.volume import Grid, Volume

ORDER = {
    "prescription": {"target": "PTV", "total_dose_gy": 50, "fractions": 25},
    "objectives": [
        {"structure": "PTV", "kind": "squared_deviation", "dose_gy": 50, "priority": 100},
        {"structure": "Core", "kind": "max_dvh", "dose_gy": 25, "volume_pct": 10},
        {"structure": "Core", "kind": "geud", "dose_gy": 20, "a": 8},
    ],
}


def test_order_roundtrip_yaml_and_json(tmp_path):
    import yaml

    (tmp_path / "o.yaml").write_text(yaml.safe_dump(ORDER))
    (tmp_path / "o.json").write_text(json.dumps(ORDER))
    a, b = load_order(tmp_path / "o.yaml"), load_order(tmp_path / "o.json")
    assert a == b
    assert a.prescription.dose_per_fraction_gy == pytest.approx(2.0)
    assert a.prescription.normalization.volume_pct == 95.0


def test_order_bad_kind_names_field_and_allowed_values():
    bad = json.loads(json.dumps(ORDER))
    bad["objectives"][0]["kind"] = "maximum"
    with pytest.raises(InputError) as e:
        parse_order(bad)
    assert "objectives.0.kind" in e.value.message and "squared_deviation" in e.value.message


def test_order_negative_dose_refused():
    bad = json.loads(json.dumps(ORDER))
    bad["prescription"]["total_dose_gy"] = -2
    with pytest.raises(InputError) as e:
        parse_order(bad)
    assert "prescription.total_dose_gy" in e.value.message


def test_order_dvh_needs_volume():
    bad = json.loads(json.dumps(ORDER))
    del bad["objectives"][1]["volume_pct"]
    with pytest.raises(InputError, match="volume_pct"):
        parse_order(bad)


def test_order_unknown_structure():
    order = MedicalOrder.model_validate(ORDER)
    with pytest.raises(InputError, match="'Core'"):
        order.check_structures(["PTV", "BODY"])
    order.check_structures(["PTV", "Core"])


def test_grid_index_world_roundtrip_oblique():
    import numpy as np

    c, s = np.cos(0.3), np.sin(0.3)
    d = ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))
    g = Grid(shape=(4, 5, 6), spacing_mm=(1.0, 2.0, 3.0), origin_mm=(10.0, -5.0, 2.0), direction=d)
    kji = np.array([[1.0, 2.0, 3.0], [3.5, 0.25, 5.0]])
    assert np.allclose(g.world_to_index(g.index_to_world(kji)), kji)
    # moving one column moves along the first direction column by spacing[0]
    step = g.index_to_world([0, 0, 1]) - g.index_to_world([0, 0, 0])
    assert np.allclose(step, np.array(d)[:, 0] * 1.0)


def test_volume_resample_identity_and_shift():
    import numpy as np

    g = Grid(shape=(3, 4, 5), spacing_mm=(1, 1, 1), origin_mm=(0, 0, 0))
    arr = np.arange(60, dtype=float).reshape(3, 4, 5)
    v = Volume(arr, g, "HU")
    g2 = Grid(shape=(3, 4, 4), spacing_mm=(1, 1, 1), origin_mm=(0.5, 0, 0))
    r = v.resample(g2)
    assert np.allclose(r.array, (arr[:, :, :-1] + arr[:, :, 1:]) / 2)
    with pytest.raises(ValueError):
        Volume(arr, g2)
