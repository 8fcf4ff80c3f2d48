"""Fuzzing the readers of what clinics send (issue 15, item 4): the DICOM importer, the RTSTRUCT,
RTDOSE and RTPLAN readers and the medical-order parser. Damaged input must be one InputError
(422 over HTTP), never another exception: the crash that a reader raises is a 500 and a stack
trace in the service.

* ``test_crasher_*``: each crash the fuzzing found, rebuilt as a named damaged file and kept;
* ``test_*_survive_*``: property tests (hypothesis, derandomized so CI is repeatable) that damage
  real files (bytes overwritten, inserted, cut, truncated) or orders (any JSON in any field).
  ``RAYRT_FUZZ_EXAMPLES=5000 pytest tests/imaging/test_fuzz.py`` fuzzes longer.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from helpers.machines import make_plan, varian
from helpers.study import SMALL_ORDER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrt.domain.errors import InputError
from rayrt.domain.order import parse_order
from rayrt.imaging.dicom_io import read_rtdose, read_rtstruct
from rayrt.imaging.rtplan import read_rtplan, write_rtplan
from rayrt.imaging.study import load_study
from rayrt.pipeline import validate_order

EXAMPLES = int(os.environ.get("RAYRT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MACHINE = varian()


@pytest.fixture(scope="module")
def files(small_study_dir, tmp_path_factory) -> Path:
    """The small study's CT, RTSTRUCT and RTDOSE, and an RTPLAN for a TrueBeam-like machine."""
    d = tmp_path_factory.mktemp("fuzz-base")
    shutil.copytree(small_study_dir, d, dirs_exist_ok=True)
    write_rtplan(make_plan(MACHINE, 2, 3, 1), MACHINE, d / "RP.dcm")
    return d


def _only_input_error(fn, *args) -> None:
    try:
        fn(*args)
    except InputError as exc:
        assert exc.status in (400, 404, 413, 415, 422) and exc.message


READERS = {
    "RS.dcm": read_rtstruct,
    "RD_1.dcm": read_rtdose,
    "RP.dcm": lambda p: read_rtplan(p, [MACHINE]),
}


# ---------------------------------------------------------------------------- the crashers, kept


def _edited(files: Path, name: str, tmp_path: Path, edit) -> Path:
    """``files/name`` changed by ``edit`` and written as it is (pydicom's value checks off, as a
    damaged file from elsewhere would be)."""
    cfg = pydicom.config.settings
    modes = cfg.reading_validation_mode, cfg.writing_validation_mode
    cfg.reading_validation_mode = cfg.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(files / name)
        edit(ds)
        out = tmp_path / name
        ds.save_as(out, enforce_file_format=True)
    finally:
        cfg.reading_validation_mode, cfg.writing_validation_mode = modes
    return out


def _refused(fn, path: Path, *words: str) -> None:
    with pytest.raises(InputError) as e:
        fn(path)
    assert e.value.status in (400, 422) and all(w in e.value.message for w in words), e.value.message


def test_crasher_rtstruct_contour_without_its_roi_number(files, tmp_path):
    p = _edited(files, "RS.dcm", tmp_path, lambda ds: delattr(ds.ROIContourSequence[0], "ReferencedROINumber"))
    _refused(read_rtstruct, p, "RTSTRUCT", "AttributeError")


def _poke(src: Path, out: Path, tag: str, text: bytes) -> Path:
    """``src`` with the start of the first value of ``tag`` (group, element in hex; an explicit-VR
    little-endian element with a 2-byte length, e.g. DS) overwritten by ``text``, as bit rot would."""
    data = bytearray(src.read_bytes())
    g, e = int(tag[:4], 16), int(tag[4:], 16)
    i = data.index(g.to_bytes(2, "little") + e.to_bytes(2, "little"), 132)
    data[i + 8 : i + 8 + len(text)] = text
    out.write_bytes(bytes(data))
    return out


def test_crasher_rtstruct_contour_data_not_numbers(files, tmp_path):
    p = _poke(files / "RS.dcm", tmp_path / "RS.dcm", "30060050", b"?4")  # Contour Data
    _refused(read_rtstruct, p, "RTSTRUCT", "?4")


def test_crasher_rtstruct_roi_number_with_two_values(files, tmp_path):
    def edit(ds):
        ds.ROIContourSequence[0].ReferencedROINumber = [1, 2]

    _refused(read_rtstruct, _edited(files, "RS.dcm", tmp_path, edit), "RTSTRUCT")


def test_crasher_rtplan_leaf_positions_not_numbers(files, tmp_path):
    p = _poke(files / "RP.dcm", tmp_path / "RP.dcm", "300a011c", b"-29.\xaah")  # Leaf/Jaw Positions
    _refused(lambda q: read_rtplan(q, [MACHINE]), p, "RTPLAN")


def test_crasher_rtplan_control_point_without_leaf_positions(files, tmp_path):
    def edit(ds):
        for item in ds.BeamSequence[0].ControlPointSequence[0].BeamLimitingDevicePositionSequence:
            delattr(item, "LeafJawPositions")

    _refused(lambda p: read_rtplan(p, [MACHINE]), _edited(files, "RP.dcm", tmp_path, edit), "RTPLAN")


def test_crasher_rtplan_cut_short(files, tmp_path):
    p = tmp_path / "RP.dcm"
    data = (files / "RP.dcm").read_bytes()
    p.write_bytes(data[: len(data) // 2])  # ends inside the beam sequence
    _refused(lambda q: read_rtplan(q, [MACHINE]), p, "RTPLAN")


def test_crasher_ct_slice_with_an_unknown_value_representation(files, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(files, study)
    ct = sorted((study / "CT").iterdir())[3]
    data = bytearray(ct.read_bytes())
    tag = bytes.fromhex("08003e10")  # (0008,103E) Series Description, explicit VR little endian
    i = data.index(tag)
    data[i + 4 : i + 6] = b"\x4c\x1a"  # its VR "LO" overwritten
    ct.write_bytes(bytes(data))
    _refused(load_study, study, "study")


# ---------------------------------------------------------------------------- property tests

BYTE_EDITS = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 255)), min_size=1, max_size=8)
MUTATION = st.one_of(
    st.tuples(st.just("overwrite"), BYTE_EDITS),
    st.tuples(st.just("insert"), st.tuples(st.integers(0, 10**7), st.binary(min_size=1, max_size=16))),
    st.tuples(st.just("delete"), st.tuples(st.integers(0, 10**7), st.integers(1, 64))),
    st.tuples(st.just("truncate"), st.integers(0, 10**7)),
)


def _mutate(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    b = bytearray(data)
    if kind == "overwrite":
        for pos, value in arg:
            b[pos % len(b)] = value
    elif kind == "insert":
        pos, extra = arg
        b[pos % len(b) : pos % len(b)] = extra
    elif kind == "delete":
        pos, n = arg
        del b[pos % len(b) : pos % len(b) + n]
    else:
        b = b[: arg % len(b)]
    return bytes(b)


@FUZZ
@given(name=st.sampled_from(sorted(READERS)), mutation=MUTATION)
def test_rt_readers_survive_damaged_files(files, tmp_path, name, mutation):
    p = tmp_path / name
    p.write_bytes(_mutate((files / name).read_bytes(), mutation))
    _only_input_error(READERS[name], p)


@FUZZ
@given(slice_index=st.integers(0, 11), mutation=MUTATION)
def test_the_importer_survives_a_damaged_slice(files, tmp_path, slice_index, mutation):
    study = tmp_path / f"s{abs(hash((slice_index, str(mutation)))) % 10**9}"
    shutil.copytree(files, study)
    ct = sorted((study / "CT").iterdir())[slice_index]
    ct.write_bytes(_mutate(ct.read_bytes(), mutation))
    try:
        _only_input_error(load_study, study)
    finally:
        shutil.rmtree(study, ignore_errors=True)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


ORDER_PATHS = list(_paths(SMALL_ORDER))


@FUZZ
@given(path=st.sampled_from(ORDER_PATHS), value=JSON)
def test_the_order_parser_survives_any_value_anywhere(path, value):
    order = copy.deepcopy(SMALL_ORDER)
    if not path:
        order = value
    else:
        parent = order
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
    _only_input_error(validate_order, order, ["BODY", "PTV", "Core"])


@FUZZ
@given(data=JSON)
def test_the_order_parser_survives_any_document(data):
    _only_input_error(parse_order, data)
