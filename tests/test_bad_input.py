"""Bad input gets a specific error from nepi_dist.errors and changes nothing.

Every case checks the exception class (all subclass NepiError) and that the
run's state is the same afterwards: every key of the run in Redis, read whole
just before and just after the refused call, plus the value, conditions or
resources the call named.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.embedded import EmbeddedRedis
from nepi_dist.errors import (
    ActionError,
    AttributeValueError,
    ConditionError,
    DuplicateGuidError,
    ExperimentIdError,
    NepiError,
    ReadOnlyAttributeError,
    TimeFormatError,
    UnknownAttributeError,
    UnknownGuidError,
    UnknownResourceTypeError,
    UnknownTraceError,
)

UNKNOWN = 10**6


@pytest.fixture(scope="module")
def run() -> Iterator[ExperimentController]:
    """One controller (embedded default) shared by the tests of this file.

    Each test registers its own resources (and deploys only those); the checks
    compare the run's keys just before and just after the refused call.
    """
    controller = ExperimentController(nthreads=4)
    try:
        yield controller
    finally:
        controller.shutdown()


BAD_TIMES = [
    "5 s",
    "-1s",
    "tomorrow",
    "",
    "1x",
    "2024010112000000000",  # 19 digits
    "202401011200000000000",  # 21 digits
    "20241301120000000000",  # 20 digits, month 13
]


def run_snapshot(ec: ExperimentController) -> dict[str, Any]:
    """Return every key of the run with its full content.

    ``running`` (which worker holds which action) is left out: a worker may
    still be clearing its entry for an action whose effect a test waited for.
    So is ``publishing``, a publisher's lease that expires on its own (10 s
    after the last publish of an earlier step).
    """
    client = ec.store.client
    volatile = {ec.store.keys.running, ec.store.keys.publishing}
    snap: dict[str, Any] = {}
    for key in client.scan_iter(match=ec.store.keys.pattern()):
        if key in volatile:
            continue
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        snap[key] = (kind, value)
    return snap


def assert_refused(
    ec: ExperimentController, error: type[NepiError], call: Callable[[], object]
) -> None:
    """``call`` raises ``error`` and the run's keys are exactly as before."""
    assert issubclass(error, NepiError)
    before = run_snapshot(ec)
    resources = ec.resources
    with pytest.raises(error):
        call()
    assert ec.resources == resources
    assert run_snapshot(ec) == before


# -- resource types and guids ---------------------------------------------------------


def test_an_unknown_resource_type_is_refused_and_registers_nothing(run: ExperimentController) -> None:
    before = run.resources
    assert_refused(run, UnknownResourceTypeError, lambda: run.register_resource("NoSuchType"))
    assert_refused(run, UnknownResourceTypeError, lambda: run.register_resource("plain"))
    g = run.register_resource("Plain")
    assert run.resources == [*before, g]


def test_a_duplicate_explicit_guid_is_refused_and_keeps_the_first_resource(run: ExperimentController) -> None:
    guid = max(run.resources, default=0) + 1000
    assert run.register_resource("Plain", guid=guid) == guid
    run.set(guid, "label", "first")
    assert_refused(run, DuplicateGuidError, lambda: run.register_resource("Forever", guid=guid))
    assert_refused(run, DuplicateGuidError, lambda: run.register_resource("Plain", guid=guid))
    assert run.get_resource(guid).rtype() == "Plain"
    assert run.get(guid, "label") == "first"
    assert run.state(guid) == ResourceState.NEW


UNKNOWN_GUID_CALLS: dict[str, Callable[[ExperimentController, int], object]] = {
    "get": lambda ec, g: ec.get(UNKNOWN, "label"),
    "set": lambda ec, g: ec.set(UNKNOWN, "label", "x"),
    "state": lambda ec, g: ec.state(UNKNOWN),
    "state_hr": lambda ec, g: ec.state(UNKNOWN, hr=True),
    "start": lambda ec, g: ec.start(UNKNOWN),
    "stop": lambda ec, g: ec.stop(UNKNOWN),
    "discover": lambda ec, g: ec.discover(UNKNOWN),
    "provision": lambda ec, g: ec.provision(UNKNOWN),
    "deploy_one": lambda ec, g: ec.deploy(UNKNOWN),
    "deploy_mixed": lambda ec, g: ec.deploy([g, UNKNOWN]),
    "release_mixed": lambda ec, g: ec.release([g, UNKNOWN]),
    "register_connection_second": lambda ec, g: ec.register_connection(g, UNKNOWN),
    "register_connection_first": lambda ec, g: ec.register_connection(UNKNOWN, g),
    "wait_finished": lambda ec, g: ec.wait_finished([g, UNKNOWN], timeout=1),
    "wait_deployed": lambda ec, g: ec.wait_deployed(UNKNOWN, timeout=1),
    "get_resource": lambda ec, g: ec.get_resource(UNKNOWN),
    "get_attributes": lambda ec, g: ec.get_attributes(UNKNOWN),
    "enable_trace": lambda ec, g: ec.enable_trace(UNKNOWN, "stdout"),
    "trace_enabled": lambda ec, g: ec.trace_enabled(UNKNOWN, "stdout"),
    "trace": lambda ec, g: ec.trace(UNKNOWN, "stdout"),
    "set_with_conditions_target": lambda ec, g: ec.set_with_conditions(
        "label", "x", [g, UNKNOWN], g, ResourceState.STARTED
    ),
}


@pytest.mark.parametrize("call", list(UNKNOWN_GUID_CALLS), ids=list(UNKNOWN_GUID_CALLS))
def test_an_unknown_guid_is_refused_by_every_call_that_names_one(run: ExperimentController, call: str) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, UnknownGuidError, lambda: UNKNOWN_GUID_CALLS[call](run, g))
    assert run.state(g) == ResourceState.NEW
    assert run.get_resource(g).deployment_group is None
    assert run.get_resource(g).connections == set()


def test_get_resource_of_a_plain_guid_gives_an_rm_with_an_echo_action(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    rm = run.get_resource(g)
    assert rm.guid == g
    assert rm.rtype() == "Plain"
    assert callable(rm.echo)
    assert rm.echo(7) == {"guid": g, "value": 7}


# -- attributes ---------------------------------------------------------------------------


def test_getting_an_unknown_attribute_is_refused(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, UnknownAttributeError, lambda: run.get(g, "nosuch"))


def test_setting_an_unknown_attribute_is_refused_and_writes_nothing(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, UnknownAttributeError, lambda: run.set(g, "nosuch", "x"))


BAD_VALUES = [
    ("label", 5),  # String given an int
    ("label", 1.5),  # String given a float
    ("count", "abc"),  # Integer given a word
    ("count", 1.5),  # Integer given a float
    ("count", True),  # Integer given a Bool
    ("count", "1.5"),  # Integer given a float written as text
    ("critical", "maybe"),  # Bool given a word
    ("critical", 1),  # Bool given an int
    ("runtime", "x"),  # Double given a word
    ("runtime", False),  # Double given a Bool
    ("count", -1),  # below range (0, 10)
    ("count", 11),  # above range (0, 10)
    ("count", "11"),  # above range, written as text
    ("mode", "c"),  # not in the allowed set
    ("mode", "A"),  # allowed values are case-sensitive
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v in BAD_VALUES])
def test_a_value_breaking_its_attribute_is_refused_and_the_old_value_stays(
    run: ExperimentController, name: str, value: object
) -> None:
    g = run.register_resource("Plain")
    run.set(g, "label", "kept")
    run.set(g, "count", 3)
    before = run.get(g, name)
    assert_refused(run, AttributeValueError, lambda: run.set(g, name, value))
    assert run.get(g, name) == before


def test_the_same_bad_values_are_refused_by_the_attribute_itself(run: ExperimentController) -> None:
    rm = run.get_resource(run.register_resource("Plain"))
    for name, value in BAD_VALUES:
        with pytest.raises(AttributeValueError):
            rm.get_attribute(name).validate(value)


def test_boundary_values_of_a_range_are_accepted(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert run.set(g, "count", 0) == 0
    assert run.set(g, "count", 10) == 10
    assert run.get(g, "count") == 10


def test_a_readonly_attribute_cannot_be_set_by_the_user(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, ReadOnlyAttributeError, lambda: run.set(g, "serial", "S-1"))
    assert run.get(g, "serial") is None


def test_critical_can_be_set_before_deploy_but_not_once_deploy_returned(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert run.set(g, "critical", False) is False
    assert run.set(g, "critical", "true") is True
    assert run.get(g, "critical") is True
    run.deploy([g])
    with pytest.raises(ReadOnlyAttributeError):
        run.set(g, "critical", False)
    run.wait_finished(g, timeout=20)
    assert run.state(g) == ResourceState.FINISHED
    fields = run.store.rm_all(g)
    with pytest.raises(ReadOnlyAttributeError):
        run.set(g, "critical", False)
    assert run.get(g, "critical") is True
    assert run.store.rm_all(g) == fields


def test_an_application_command_is_settable_before_deploy_and_read_only_after(run: ExperimentController) -> None:
    node = run.register_resource("Node")
    app = run.register_resource("Application")
    run.register_connection(app, node)
    run.set(app, "command", "echo one")
    run.set(app, "command", "echo two")
    assert run.get(app, "command") == "echo two"
    run.deploy([node, app])
    run.wait_finished(app, timeout=20)
    assert run.state(app) == ResourceState.FINISHED
    fields = run.store.rm_all(app)
    with pytest.raises(ReadOnlyAttributeError):
        run.set(app, "command", "rm -rf /")
    assert run.get(app, "command") == "echo two"
    assert run.store.rm_all(app) == fields


def test_a_readonly_attribute_cannot_be_set_through_set_with_conditions(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    other = run.register_resource("Plain")
    assert_refused(
        run,
        ReadOnlyAttributeError,
        lambda: run.set_with_conditions("serial", "S-1", g, other, ResourceState.STARTED),
    )


def test_an_exec_readonly_attribute_cannot_be_set_through_set_with_conditions(run: ExperimentController) -> None:
    """set_with_conditions sets once the RM is STARTED, i.e. always after deploy."""
    g = run.register_resource("Plain")
    other = run.register_resource("Plain")
    assert_refused(
        run,
        ReadOnlyAttributeError,
        lambda: run.set_with_conditions("critical", False, g, other, ResourceState.STARTED),
    )


def test_set_with_conditions_refuses_an_unknown_attribute(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    other = run.register_resource("Plain")
    assert_refused(
        run,
        UnknownAttributeError,
        lambda: run.set_with_conditions("nosuch", 1, [g], [other], ResourceState.STARTED),
    )


@pytest.mark.parametrize(("name", "value"), [("count", 11), ("count", "abc"), ("mode", "c"), ("label", 3)])
def test_set_with_conditions_refuses_a_bad_value(run: ExperimentController, name: str, value: object) -> None:
    g = run.register_resource("Plain")
    other = run.register_resource("Plain")
    assert_refused(
        run,
        AttributeValueError,
        lambda: run.set_with_conditions(name, value, [g], [other], ResourceState.STARTED),
    )


def test_set_with_conditions_refuses_a_malformed_time(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    other = run.register_resource("Plain")
    assert_refused(
        run,
        TimeFormatError,
        lambda: run.set_with_conditions("label", "x", [g], [other], ResourceState.STARTED, "5 s"),
    )


def test_set_with_conditions_refuses_an_unknown_guid_in_its_condition(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(
        run,
        ConditionError,
        lambda: run.set_with_conditions("label", "x", [g], [g, UNKNOWN], ResourceState.STARTED),
    )


# -- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize("date", BAD_TIMES)
def test_schedule_refuses_a_malformed_date_and_schedules_nothing(run: ExperimentController, date: str) -> None:
    g = run.register_resource("Plain")
    rm = run.get_resource(g)
    with pytest.raises(TimeFormatError):
        run.schedule(date, lambda: None)
    assert_refused(run, TimeFormatError, lambda: run.schedule(date, functools.partial(rm.echo, 1), track=True))
    assert_refused(run, TimeFormatError, lambda: run.schedule(date, rm.start))


@pytest.mark.parametrize("time", BAD_TIMES)
def test_register_condition_refuses_a_malformed_time(run: ExperimentController, time: str) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    assert_refused(
        run, TimeFormatError, lambda: run.register_condition(a, ResourceAction.START, b, ResourceState.STARTED, time)
    )
    assert run.get_resource(a).conditions == {}


# -- conditions -------------------------------------------------------------------------------


def test_a_condition_waiting_on_an_unknown_guid_is_refused(run: ExperimentController) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    assert_refused(
        run, ConditionError, lambda: run.register_condition(a, ResourceAction.START, [b, UNKNOWN], ResourceState.READY)
    )
    assert run.get_resource(a).conditions == {}


def test_a_condition_on_an_unknown_guid_is_refused_for_every_guid(run: ExperimentController) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    assert_refused(
        run,
        UnknownGuidError,
        lambda: run.register_condition([a, UNKNOWN], ResourceAction.START, b, ResourceState.READY),
    )
    assert run.get_resource(a).conditions == {}


@pytest.mark.parametrize("action", [3, -1, "bogus", None, 1.5])
def test_a_condition_with_an_unknown_action_is_refused(run: ExperimentController, action: object) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    assert_refused(run, ConditionError, lambda: run.register_condition(a, action, b, ResourceState.READY))
    assert run.get_resource(a).conditions == {}


@pytest.mark.parametrize("state", [9, -1, "bogus", None, 2.5, "ready-ish"])
def test_a_condition_with_an_unknown_state_is_refused(run: ExperimentController, state: object) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    assert_refused(run, ConditionError, lambda: run.register_condition(a, ResourceAction.START, b, state))
    assert run.get_resource(a).conditions == {}


# -- traces --------------------------------------------------------------------------------------


def test_enabling_an_unknown_trace_is_refused(run: ExperimentController) -> None:
    node = run.register_resource("Node")
    app = run.register_resource("Application")
    run.register_connection(app, node)
    assert_refused(run, UnknownTraceError, lambda: run.enable_trace(app, "nosuch"))
    assert_refused(run, UnknownTraceError, lambda: run.enable_trace(node, "stdout"))
    assert_refused(run, UnknownTraceError, lambda: run.trace_enabled(app, "nosuch"))
    assert run.trace_enabled(app, "stdout") is False


# -- identity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exp_id", ["a b", "x:y", "{t}", "a/b", "x*", "é"])
def test_an_exp_id_with_unsafe_characters_is_refused_before_touching_redis(
    redis_server: EmbeddedRedis, exp_id: str
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ExperimentIdError):
            ExperimentController(exp_id=exp_id, redis_url=redis_server.url, local_worker=False)
        assert client.dbsize() == 0
    finally:
        client.close()


@pytest.mark.parametrize("run_id", ["a b", "x:y", "{t}", "a/b"])
def test_a_run_id_with_unsafe_characters_is_refused_before_touching_redis(
    redis_server: EmbeddedRedis, run_id: str
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ExperimentIdError):
            ExperimentController(exp_id="fine", run_id=run_id, redis_url=redis_server.url, local_worker=False)
        assert client.dbsize() == 0
    finally:
        client.close()


def test_an_unsafe_exp_id_is_refused_on_the_embedded_default_too() -> None:
    with pytest.raises(ExperimentIdError):
        ExperimentController(exp_id="x:y")


# -- scheduling RM methods ----------------------------------------------------------------------------


def test_scheduling_an_rm_method_with_a_non_json_argument_is_refused(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    rm = run.get_resource(g)
    assert callable(rm.echo)
    assert_refused(run, ActionError, lambda: run.schedule("0s", functools.partial(rm.echo, object()), track=True))
    assert_refused(run, ActionError, lambda: run.schedule("0s", functools.partial(rm.echo, value={1, 2})))
