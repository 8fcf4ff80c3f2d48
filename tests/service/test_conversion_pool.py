"""Conversion ActorPools on a real local Ray, running rayrt's one conversion engine
(rayrt.convert.convert.convert_for_machine) on a small planned phantom.

The standard plan is converted for ``standard_twin`` (same beam, same MLC: the policy reuses the
plan, the release QA still runs), which keeps each conversion to a few seconds.
"""

import pytest

from rayrt.domain.errors import InputError
from rayrt.service.conversion import ConversionPoolSettings

pytestmark = pytest.mark.ray

TWIN = "standard_twin"


def test_pool_settings_sizes_and_defaults():
    s = ConversionPoolSettings.model_validate({"default_size": 1, "max_size": 2, "sizes": {"big": 3}})
    assert s.initial("big") == 3 and s.maximum("big") == 3
    assert s.initial("other") == 1 and s.maximum("other") == 2
    assert ConversionPoolSettings().actor_options == {"num_cpus": 0}  # pools live beside the tasks on a small node
    with pytest.raises(InputError, match="conversion_pool.sizes.bad"):
        ConversionPoolSettings.model_validate({"sizes": {"bad": 0}}).initial("bad")


@pytest.fixture(scope="module")
def standard(fast_planning):
    """A planned small phantom (its StandardPlan and PlanGeometry) and its conversion in this process."""
    from helpers.study import SMALL_ORDER, make_small_study

    from rayrt.convert.convert import convert_for_machine
    from rayrt.domain.order import parse_order
    from rayrt.domain.planning import planning_request
    from rayrt.machines import get_machine
    from rayrt.pipeline import run_recipe

    res = run_recipe(
        make_small_study(with_dose=False),
        parse_order(SMALL_ORDER),
        planning_request(fast_planning, []),
        until="normalize",
    )
    std, geo = res["standard_plan"], res["geometry"]
    local = convert_for_machine(std, geo, get_machine(TWIN), None)
    return std, geo, local


def test_pools_convert_grow_with_demand_and_load_model_once(ray_session, standard):
    import ray

    from rayrt.service.conversion import ConversionPools

    std, geo, local = standard
    pools = ConversionPools(
        [TWIN, "truebeam_m120"],
        settings={"default_size": 1, "max_size": 2, "actor_options": {"num_cpus": 0}},
        start=False,
    )
    try:
        assert pools.stats() == []  # lazy: nothing started yet
        assert pools.ensure([TWIN, "no_such_machine"]) == [TWIN]
        ref, geo_ref = ray.put(std), ray.put(geo)  # the standard plan and its geometry go into the object store once
        refs = [
            pools.submit(TWIN, [ref], [geo_ref]),
            pools.submit(TWIN, ref, geo_ref),
        ]  # 2 queued > 1 actor: the pool grows
        outs = ray.get(refs, timeout=300)
        for r in outs:
            assert r.machine == TWIN and r.status == local.status and r.mode == local.mode == "reuse"
            assert r.plan.total_mu == pytest.approx(local.plan.total_mu) and r.qa.verdict == local.qa.verdict
        (st,) = pools.stats()
        assert st.machine == TWIN and st.size == 2 and st.grown == 1 and st.submitted == 2 and st.queued == 0
        info = pools.worker_info(TWIN)
        assert sorted(i["calls"] for i in info) == [1, 1]
        assert all(i["model_loads_in_process"] == 1 and i["machine"] == TWIN for i in info)  # loaded once per actor
        assert len({i["pid"] for i in info}) == 2
        with pytest.raises(InputError, match="no conversion pool"):
            pools.submit("no_such_machine", ref, geo_ref)
    finally:
        pools.shutdown()


def test_named_pools_actor_shared_by_callers(ray_session, standard):
    """The pools as one named actor (what the scheduler creates): a second caller gets the same
    actor, the standard plan passed as ``[ref]`` reaches the worker without a copy in between."""
    import uuid

    import ray

    from rayrt.service.conversion import get_or_create_conversion_pools

    std, geo, local = standard
    name = f"pools-{uuid.uuid4().hex[:6]}"
    pools = get_or_create_conversion_pools(
        name=name, detached=False, machines=[TWIN], settings={"actor_options": {"num_cpus": 0}}, start=False
    )
    try:
        same = get_or_create_conversion_pools(name=name, detached=False)
        assert same._actor_id == pools._actor_id
        inner = ray.get(pools.submit.remote(TWIN, [ray.put(std)], [ray.put(geo)], None))
        out = ray.get(inner, timeout=300)
        assert out.status == local.status and out.plan.total_mu == pytest.approx(local.plan.total_mu)
        stats = ray.get(same.stats.remote())
        assert [(s.machine, s.submitted) for s in stats] == [(TWIN, 1)]
    finally:
        ray.get(pools.shutdown.remote())
        ray.kill(pools)


def test_convert_stage_on_ray_uses_the_machine_pools(ray_session, fast_planning):
    """The pipeline's convert stage with the RayExecutor: each machine on its pool, the same result
    as in one process; the QA stage reuses the release loop's report."""
    import ray
    from helpers.study import SMALL_ORDER, make_small_study

    from rayrt.convert.convert import convert_for_machine
    from rayrt.domain.order import parse_order
    from rayrt.domain.planning import planning_request
    from rayrt.machines import get_machine
    from rayrt.pipeline import run_recipe
    from rayrt.service.controlled import RayExecutor
    from rayrt.service.conversion import get_or_create_conversion_pools

    name = "pools-stage-test"
    pools = get_or_create_conversion_pools(
        name=name, detached=False, machines=[TWIN], settings={"actor_options": {"num_cpus": 0}}, start=False
    )
    counts = []
    try:
        ex = RayExecutor(pools=name, on_tasks=lambda sub, fin: counts.append((sub, fin)))
        order = parse_order(SMALL_ORDER)
        res = run_recipe(make_small_study(with_dose=False), order, planning_request(fast_planning, [TWIN]), executor=ex)
        (p,) = res["converted"].plans
        # the same engine in this process on the same standard plan gives the same plan
        mine = convert_for_machine(res["standard_plan"], res["geometry"], get_machine(TWIN), None)
        assert p.machine == TWIN and p.mode == mine.mode == "reuse" and p.status == mine.status
        assert p.plan.total_mu == pytest.approx(mine.plan.total_mu, rel=1e-9) and p.qa.verdict == mine.qa.verdict
        assert [(s.machine, s.submitted) for s in ray.get(pools.stats.remote())] == [(TWIN, 1)]
        assert res["qa"].reports[1] == p.qa  # reused, not recomputed
        sub, fin = counts[-1]
        assert sub == fin and sub >= len(res["beamlet_set"].beams) + 1  # every task and conversion accounted for
    finally:
        ray.get(pools.shutdown.remote())
        ray.kill(pools)
