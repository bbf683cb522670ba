"""Deployment groups: ``deploy(guids, wait_all_ready, group)`` and interactive deployment."""

from __future__ import annotations

from nepi_dist import ExperimentController, ResourceState


def stamps(ec: ExperimentController, guid: int) -> tuple[float | None, ...]:
    rm = ec.get_resource(guid)
    return (rm.discover_time, rm.provision_time, rm.ready_time, rm.start_time, rm.finish_time)


def test_with_wait_all_ready_no_rm_of_the_group_starts_before_all_of_it_is_ready(
    ec: ExperimentController,
) -> None:
    slow = ec.register_resource("SlowDeploy")
    fast = [ec.register_resource("Plain") for _ in range(3)]
    group = [slow, *fast]
    ec.deploy(wait_all_ready=True)
    ec.wait_finished(group, timeout=15)
    assert [ec.state(g) for g in group] == [ResourceState.FINISHED] * 4
    rms = [ec.get_resource(g) for g in group]
    assert min(rm.ready_time for rm in rms[1:]) + 0.6 <= rms[0].ready_time, "the slow RM was slow"
    assert min(rm.start_time for rm in rms) >= max(rm.ready_time for rm in rms)


def test_without_wait_all_ready_a_fast_rm_starts_before_the_slow_one_is_ready(ec: ExperimentController) -> None:
    slow = ec.register_resource("SlowDeploy")
    fast = ec.register_resource("Plain")
    ec.deploy(wait_all_ready=False)
    ec.wait_finished([slow, fast], timeout=15)
    rm_slow, rm_fast = ec.get_resource(slow), ec.get_resource(fast)
    assert rm_fast.start_time < rm_slow.ready_time
    assert rm_slow.start_time >= rm_slow.ready_time


def test_two_groups_are_independent(ec: ExperimentController) -> None:
    slow = ec.register_resource("SlowDeploy")
    fast = ec.register_resource("Plain")
    g1 = ec.deploy([slow])
    g2 = ec.deploy([fast])
    assert g1 != g2
    ec.wait_finished([slow, fast], timeout=15)
    rm_slow, rm_fast = ec.get_resource(slow), ec.get_resource(fast)
    assert (rm_slow.deployment_group, rm_fast.deployment_group) == (g1, g2)
    assert rm_fast.start_time < rm_slow.ready_time, "the fast group did not wait for the slow one"
    assert rm_slow.start_time >= rm_slow.ready_time


def test_a_second_deploy_deploys_only_the_new_rms_and_runs_them_to_finished(ec: ExperimentController) -> None:
    first = [ec.register_resource("Plain") for _ in range(2)]
    gid1 = ec.deploy()
    ec.wait_finished(first, timeout=10)
    times = {g: stamps(ec, g) for g in first}

    second = [ec.register_resource("Plain") for _ in range(2)]
    gid2 = ec.deploy()
    assert gid2 != gid1
    ec.wait_finished(second, timeout=10)
    assert [ec.state(g) for g in second] == [ResourceState.FINISHED] * 2
    assert [ec.get_resource(g).deployment_group for g in second] == [gid2, gid2]
    assert [ec.get_resource(g).deployment_group for g in first] == [gid1, gid1]
    assert [ec.state(g) for g in first] == [ResourceState.FINISHED] * 2
    assert {g: stamps(ec, g) for g in first} == times
    for g in second:
        assert ec.get_resource(g).discover_time > max(times[f][4] for f in first)


def test_deploy_into_an_existing_group_adds_to_it(ec: ExperimentController) -> None:
    slow = ec.register_resource("SlowDeploy")
    ec.set(slow, "rounds", 5)
    gid = ec.deploy([slow])
    late = ec.register_resource("Plain")
    assert ec.deploy([late], group=gid) == gid
    ec.wait_finished([slow, late], timeout=15)
    rm_slow, rm_late = ec.get_resource(slow), ec.get_resource(late)
    assert rm_late.deployment_group == gid
    assert rm_late.ready_time < rm_slow.ready_time, "the added RM was READY first"
    assert rm_late.start_time >= rm_slow.ready_time, "and waited for the whole group"


def test_deploy_returns_the_group_id_its_rms_join(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    gid_a = ec.deploy(a)
    gid_b = ec.deploy([b])
    assert isinstance(gid_a, int) and isinstance(gid_b, int)
    assert gid_a != gid_b
    assert ec.get_resource(a).deployment_group == gid_a
    assert ec.get_resource(b).deployment_group == gid_b
    ec.wait_finished([a, b], timeout=10)
