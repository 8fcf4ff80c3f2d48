"""Conversion pools: leaf-boundary resampling (pure) and per-machine actor pools on a real local Ray."""

import numpy as np
import pytest

from rayrt.domain.beam_model import BeamModel
from rayrt.domain.errors import InputError
from rayrt.domain.machine import JawModel, MachineModel, MLCModel
from rayrt.domain.plan import Beam, Plan, Segment
from rayrt.service.conversion import (
    ConversionPoolSettings,
    LeafResampleRequest,
    leaf_resample,
    open_area_mm2,
    resample_leaves,
    resolve_conversion,
)

# Millennium 120: 10 x 10 mm, 40 x 5 mm, 10 x 10 mm (at the isocenter)
MILLENNIUM = np.concatenate([np.arange(-200, -100, 10), np.arange(-100, 100, 5), np.arange(100, 201, 10)]).astype(float)
AGILITY = np.arange(-200, 201, 5).astype(float)  # 80 x 5 mm
MLCI2 = np.arange(-200, 201, 10).astype(float)  # 40 x 10 mm


# A valid 6 MV SVD pencil-beam parameter set (m and betas of matRad's generic machine; coarse
# kernel tails). Conversion does not use the beam model; the machine model just has to be valid.
R_MM = [0.5, 2.0, 10.0, 50.0]
BEAM = BeamModel(
    attenuation_per_mm=0.005066,
    betas_per_mm=(0.3252, 0.016, 0.0051),
    kernel_point_weights=(0.5, 0.1, 0.05),
    kernel_radii_mm=R_MM,
    kernels_per_mm2=tuple([float(a * np.exp(-r / s)) for r in R_MM] for a, s in ((0.05, 1.0), (0.002, 10.0), (1e-4, 40.0))),
    primary_fluence_radius_mm=[0.0, 100.0, 200.0],
    primary_fluence=[1.0, 1.03, 1.05],
    source_sigma_mm=2.0,
    head_scatter_field_mm=[40.0, 100.0, 400.0],
    head_scatter=[0.95, 1.0, 1.05],
)


def machine(name, boundaries, jaw_x=True, interdigitation=True):
    return MachineModel(
        name=name,
        nominal_energy_mv=6,
        beam=BEAM,
        mlc=MLCModel(name=name + "-mlc", leaf_boundaries_mm=boundaries.tolist(), interdigitation=interdigitation, min_gap_mm=0.5),
        jaw_x=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMX") if jaw_x else None,
        jaw_y=JawModel(min_mm=-200, max_mm=200, dicom_type="ASYMY"),
    )


def circle_aperture(boundaries, radius_mm=40.0, cx=5.0):
    """Leaf tips of a circular field (centre (cx, 0)), closed pairs at 0 gap."""
    c = 0.5 * (boundaries[:-1] + boundaries[1:])
    half = np.sqrt(np.clip(radius_mm**2 - c**2, 0, None))
    return cx - half, cx + half


def test_identity_geometry_keeps_open_pairs():
    x1, x2 = circle_aperture(MILLENNIUM)
    n1, n2 = resample_leaves(x1, x2, MILLENNIUM, MILLENNIUM, min_gap_mm=0.5)
    open_ = x2 - x1 > 1e-6
    np.testing.assert_allclose(n1[open_], x1[open_])
    np.testing.assert_allclose(n2[open_], x2[open_])
    assert np.all(n2[~open_] - n1[~open_] == pytest.approx(0.5))  # closed pairs parked with the minimum gap
    assert np.all(np.abs(0.5 * (n1 + n2)[~open_] - 5.0) < 1e-9)  # at the middle of the open field


def test_cover_mode_takes_union_of_overlapped_pairs():
    # two 5 mm source pairs [0,5] and [5,10] map onto one 10 mm MLCi2 pair [0,10]
    x1 = np.zeros(MILLENNIUM.size - 1)
    x2 = np.zeros_like(x1)
    i0 = int(np.searchsorted(MILLENNIUM, 0.0))
    x1[i0], x2[i0] = -10.0, 30.0
    x1[i0 + 1], x2[i0 + 1] = -25.0, 12.0
    n1, n2 = resample_leaves(x1, x2, MILLENNIUM, MLCI2, mode="cover")
    j0 = int(np.searchsorted(MLCI2, 0.0))
    assert (n1[j0], n2[j0]) == (-25.0, 30.0)
    # everything else is closed
    others = np.arange(MLCI2.size - 1) != j0
    assert np.all(n2[others] - n1[others] == pytest.approx(0.5))


def test_aligned_rectangle_keeps_area_exactly_both_modes():
    x1 = np.where(np.abs(0.5 * (MILLENNIUM[:-1] + MILLENNIUM[1:])) < 50, -50.0, 0.0)
    x2 = -x1
    for mode in ("cover", "area"):
        n1, n2 = resample_leaves(x1, x2, MILLENNIUM, AGILITY, mode=mode)
        a_src = open_area_mm2(x1, x2, MILLENNIUM)[0]
        a_dst = open_area_mm2(n1, n2, AGILITY, open_tol_mm=0.5 + 1e-9)[0]
        assert a_src == pytest.approx(100 * 100) and a_dst == pytest.approx(a_src)


def test_area_mode_preserves_area_better_than_cover_on_a_circle():
    x1, x2 = circle_aperture(MILLENNIUM, radius_mm=37.0)
    a_src = open_area_mm2(x1, x2, MILLENNIUM)[0]
    areas = {}
    for mode in ("cover", "area"):
        n1, n2 = resample_leaves(x1, x2, MILLENNIUM, MLCI2, mode=mode)
        areas[mode] = open_area_mm2(n1, n2, MLCI2, open_tol_mm=0.5 + 1e-9)[0]
    assert areas["cover"] > a_src  # union never loses aperture
    assert abs(areas["area"] - a_src) < abs(areas["cover"] - a_src)
    assert abs(areas["area"] - a_src) / a_src < 0.05


def test_travel_limits_and_bad_pair_count():
    x1 = np.full(AGILITY.size - 1, -190.0)
    x2 = np.full(AGILITY.size - 1, 190.0)
    n1, n2 = resample_leaves(x1, x2, AGILITY, AGILITY, min_position_mm=-150, max_position_mm=150)
    assert n1.min() == -150 and n2.max() == 150
    with pytest.raises(InputError, match="source MLC"):
        resample_leaves(x1[:-1], x2[:-1], AGILITY, MLCI2)


def make_plan(n_beams=3, n_segments=4):
    beams = []
    for b in range(n_beams):
        segs = []
        for s in range(n_segments):
            x1, x2 = circle_aperture(MILLENNIUM, radius_mm=20.0 + 8 * s, cx=3.0 * b)
            segs.append(Segment(x1_mm=x1.tolist(), x2_mm=x2.tolist(), jaw_x_mm=(-80, 80), jaw_y_mm=(-60, 60), mu=10.0 + s))
        beams.append(Beam(name=f"B{b}", number=b + 1, gantry_deg=72.0 * b, isocenter_mm=(0.0, 0.0, 0.0), segments=segs))
    return Plan(machine="Standard", patient_id="p1", fractions=25, prescription_gy=50, beams=beams)


def test_leaf_resample_plan_onto_jawless_x_machine():
    plan = make_plan()
    out = leaf_resample(LeafResampleRequest(plan=plan, source_leaf_boundaries_mm=MILLENNIUM.tolist()), machine("Agility1", AGILITY, jaw_x=False))
    assert out.plan.machine == "Agility1" and out.plan.source_plan_id == plan.id and out.plan.id != plan.id
    seg = out.plan.beams[1].segments[2]
    assert len(seg.x1_mm) == 80 and seg.jaw_x_mm is None and seg.jaw_y_mm == (-60, 60) and seg.mu == 12.0
    assert out.plan.total_mu == pytest.approx(plan.total_mu)
    assert 0.99 < out.area_ratio < 1.15
    assert "leaf_resample" in out.plan.notes[-1]


def test_resolve_conversion_names_and_paths():
    assert resolve_conversion("leaf_resample") is leaf_resample
    assert resolve_conversion("rayrt.service.conversion:leaf_resample") is leaf_resample
    assert resolve_conversion("rayrt.service.conversion.leaf_resample") is leaf_resample
    with pytest.raises(InputError, match="cannot load"):
        resolve_conversion("rayrt.service.conversion:nope")
    s = ConversionPoolSettings.model_validate({"default_size": 1, "max_size": 2, "sizes": {"big": 3}})
    assert (s.initial("x"), s.maximum("x"), s.initial("big"), s.maximum("big")) == (1, 2, 3, 3)


# ------------------------------------------------------------------ real Ray pools


@pytest.fixture(scope="module")
def ray_ready(ray_session):
    """The session's local Ray (tests/conftest.py)."""
    return ray_session


@pytest.mark.ray
def test_pools_convert_grow_with_demand_and_load_model_once(ray_ready):
    from rayrt.service.conversion import ConversionPools

    models = {"Agility1": machine("Agility1", AGILITY, jaw_x=False), "Synergy1": machine("Synergy1", MLCI2, interdigitation=False)}
    pools = ConversionPools(
        models,
        conversion="rayrt.service.conversion:leaf_resample",
        settings={"default_size": 1, "max_size": 2, "sizes": {"Synergy1": 1}},
        actor_options={"num_cpus": 0},
    )
    try:
        assert pools.size("Agility1") == 1 and pools.size("Synergy1") == 1
        plans = [make_plan(n_beams=2, n_segments=3) for _ in range(6)]
        reqs = [LeafResampleRequest(plan=p, source_leaf_boundaries_mm=MILLENNIUM.tolist(), mode="area") for p in plans]
        results = pools.map("Agility1", reqs, timeout_s=300)
        assert pools.size("Agility1") == 2  # 6 queued > 1 actor -> grew, capped at max_size
        assert pools.size("Synergy1") == 1
        # the actors computed exactly what the pure function computes
        for req, got in zip(reqs, results):
            want = leaf_resample(req, models["Agility1"])
            assert [s.x1_mm for b in got.plan.beams for s in b.segments] == [s.x1_mm for b in want.plan.beams for s in b.segments]
            assert got.target_open_area_mm2 == pytest.approx(want.target_open_area_mm2)
        info = pools.worker_info("Agility1")
        assert sum(i["calls"] for i in info) == 6
        assert all(i["model_loads_in_process"] == 1 and i["machine"] == "Agility1" for i in info)
        assert len({i["pid"] for i in info}) == 2
        syn = pools.convert("Synergy1", reqs[0], timeout_s=120)
        assert syn.machine == "Synergy1" and len(syn.plan.beams[0].segments[0].x1_mm) == 40
        stats = {s.machine: s for s in pools.stats()}
        assert stats["Agility1"].grown == 1 and stats["Agility1"].submitted == 6 and stats["Agility1"].queued == 0
        assert pools.shrink_idle(idle_s=0) == 1 and pools.size("Agility1") == 1
        with pytest.raises(InputError) as e:
            pools.submit("Nope", reqs[0])
        assert e.value.status == 404
    finally:
        pools.shutdown()


@pytest.mark.ray
def test_pools_by_machine_name_load_the_library_model_once_per_actor(ray_ready):
    """Pools created from names: each actor loads its machine from configs/machines itself."""
    from rayrt.dose.machines import get_machine
    from rayrt.service.conversion import ConversionPools

    standard = get_machine("standard")
    pools = ConversionPools(["halcyon", "versahd_agility"], settings={"default_size": 1, "max_size": 1, "actor_options": {"num_cpus": 0}})
    try:
        c = 0.5 * (np.asarray(standard.mlc.leaf_boundaries_mm[:-1]) + np.asarray(standard.mlc.leaf_boundaries_mm[1:]))
        half = np.sqrt(np.clip(60.0**2 - c**2, 0, None))
        seg = Segment(x1_mm=(-half).tolist(), x2_mm=half.tolist(), jaw_x_mm=(-70, 70), jaw_y_mm=(-70, 70), mu=50.0)
        plan = Plan(machine="standard", beams=[Beam(isocenter_mm=(0.0, 0.0, 0.0), segments=[seg])])
        req = LeafResampleRequest(plan=plan, source_leaf_boundaries_mm=standard.mlc.leaf_boundaries_mm, mode="area")
        out = pools.map("halcyon", [req] * 3, timeout_s=120)
        halcyon = get_machine("halcyon")
        s = out[0].plan.beams[0].segments[0]
        assert out[0].machine == "halcyon" and len(s.x1_mm) == halcyon.mlc.num_pairs
        assert s.jaw_x_mm is None  # Halcyon is jawless
        assert min(s.x1_mm) >= halcyon.mlc.min_position_mm and max(s.x2_mm) <= halcyon.mlc.max_position_mm
        assert abs(out[0].area_ratio - 1.0) < 0.05  # a 12 cm circle keeps its area on 1 cm leaves to a few %
        (info,) = pools.worker_info("halcyon")
        assert info["calls"] == 3 and info["model_loads_in_process"] == 1 and pools.size("halcyon") == 1
        agility = pools.convert("versahd_agility", req, timeout_s=120)
        assert len(agility.plan.beams[0].segments[0].x1_mm) == 80
    finally:
        pools.shutdown()


@pytest.mark.ray
def test_named_pools_actor_shared_by_callers(ray_ready):
    """The threaded pools actor: several callers convert concurrently through one named actor."""
    import uuid

    import ray

    from rayrt.service.conversion import get_or_create_conversion_pools

    name = f"test-pools-{uuid.uuid4().hex[:6]}"
    models = {"Agility1": machine("Agility1", AGILITY, jaw_x=False)}
    pools = get_or_create_conversion_pools(
        name=name, detached=False, machines=models, settings={"default_size": 1, "max_size": 2, "actor_options": {"num_cpus": 0}}
    )
    try:
        req = LeafResampleRequest(plan=make_plan(1, 2), source_leaf_boundaries_mm=MILLENNIUM.tolist())
        same = get_or_create_conversion_pools(name=name, detached=False)
        outs = ray.get([pools.convert.remote("Agility1", req) for _ in range(3)] + [same.convert.remote("Agility1", req)], timeout=180)
        assert {o.machine for o in outs} == {"Agility1"} and len({o.target_open_area_mm2 for o in outs}) == 1
        inner = ray.get(same.submit.remote("Agility1", req))
        assert ray.get(inner, timeout=120).machine == "Agility1"
        stats = ray.get(same.stats.remote())
        assert stats[0].submitted == 5 and stats[0].queued == 0 and 1 <= stats[0].size <= 2
    finally:
        ray.get(pools.shutdown.remote())
        ray.kill(pools)


@pytest.mark.ray
def test_machine_down_replans_through_the_conversion_pool(ray_ready, tmp_path):
    """End to end: a machine goes down -> its booking moves -> the callback hands the job to a
    task (never calling back into the registry actor synchronously) -> the plan is converted on
    the new machine's pool -> the booking there becomes 'booked' with the converted plan."""
    import time
    import uuid

    import ray

    from rayrt.service.conversion import get_or_create_conversion_pools
    from rayrt.service.machines import BookingState, MachineRegistryActor

    def _replan(req, pools_name, registry_name, plans_by_job, source_boundaries):
        """What the scheduler does for a ReplanRequest: convert the job's standard plan for the new
        machine on that machine's pool, then attach the converted plan to the booking."""
        pools = ray.get_actor(pools_name)
        registry = ray.get_actor(registry_name)
        if req.to_machine is None or not req.needs_conversion:
            return None
        payload = LeafResampleRequest(plan=plans_by_job[req.job_id], source_leaf_boundaries_mm=source_boundaries)
        result = ray.get(pools.convert.remote(req.to_machine, payload))
        ray.get(registry.attach_plan.remote(req.to_machine, req.job_id, result.plan.id))
        return result.plan.id

    tag = uuid.uuid4().hex[:6]
    pools_name, registry_name = f"pools-{tag}", f"registry-{tag}"
    models = {"Agility1": machine("Agility1", AGILITY, jaw_x=False), "Synergy1": machine("Synergy1", MLCI2)}
    pools = get_or_create_conversion_pools(name=pools_name, detached=False, machines=models, settings={"actor_options": {"num_cpus": 0}})
    plans = {"job1": make_plan(2, 2)}
    replan_task = ray.remote(num_cpus=0)(_replan)

    def callback(req, _task=replan_task, _args=(pools_name, registry_name, plans, MILLENNIUM.tolist())):
        _task.remote(req, *_args)  # fire and forget: the registry must not wait on itself

    registry = MachineRegistryActor.options(name=registry_name).remote(list(models), data_dir=str(tmp_path), replan_callback=callback)
    try:
        ray.get(registry.book.remote("Agility1", "job1", "p1", 20, "plan-on-agility"))
        change = ray.get(registry.set_status.remote("Agility1", "down", "malfunction", "MLC leaf motor"))
        assert [b.moved_to for b in change.moved] == ["Synergy1"]
        booking = None
        for _ in range(240):
            (booking,) = ray.get(registry.bookings.remote("Synergy1"))
            if booking.state is BookingState.booked:
                break
            time.sleep(0.5)
        assert booking.state is BookingState.booked and booking.plan_id and booking.plan_id != "plan-on-agility"
        assert booking.moved_from == "Agility1" and "MLC leaf motor" in booking.move_reason
        assert any("plan" in h and "attached" in h for h in booking.history)
    finally:
        for name in ray.get(registry.names.remote()):
            ray.kill(ray.get(registry.queue.remote(name)))
        ray.kill(registry)
        ray.get(pools.shutdown.remote())
        ray.kill(pools)
