"""Bad input gets a specific error from nepi_dist.errors and changes nothing.

Every case checks the exception class (all subclass NepiError) and that the
run's state is the same afterwards: the run's keys in Redis, read whole, for
an undeployed run; the attribute or conditions concerned once workers act.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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

UNKNOWN = 999

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
    """Return every key of the run with its full content."""
    client = ec.store.client
    snap: dict[str, Any] = {}
    for key in client.scan_iter(match=ec.store.keys.pattern()):
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


def test_an_unknown_resource_type_is_refused_and_registers_nothing(ec: ExperimentController) -> None:
    assert_refused(ec, UnknownResourceTypeError, lambda: ec.register_resource("NoSuchType"))
    assert ec.resources == []
    assert ec.register_resource("Plain") == 1


def test_a_duplicate_explicit_guid_is_refused_and_keeps_the_first_resource(ec: ExperimentController) -> None:
    assert ec.register_resource("Plain", guid=5) == 5
    assert_refused(ec, DuplicateGuidError, lambda: ec.register_resource("Forever", guid=5))
    assert ec.resources == [5]
    assert ec.get_resource(5).rtype() == "Plain"


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
def test_an_unknown_guid_is_refused_by_every_call_that_names_one(ec: ExperimentController, call: str) -> None:
    g = ec.register_resource("Plain")
    assert_refused(ec, UnknownGuidError, lambda: UNKNOWN_GUID_CALLS[call](ec, g))
    assert ec.state(g) == ResourceState.NEW
    assert ec.get_resource(g).deployment_group is None
    assert ec.get_resource(g).connections == set()


def test_get_resource_of_a_plain_guid_gives_an_rm_with_an_echo_action(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    rm = ec.get_resource(g)
    assert rm.guid == g
    assert rm.rtype() == "Plain"
    assert callable(rm.echo)
    assert rm.echo(7) == {"guid": g, "value": 7}


# -- attributes ---------------------------------------------------------------------------


def test_getting_an_unknown_attribute_is_refused(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    assert_refused(ec, UnknownAttributeError, lambda: ec.get(g, "nosuch"))


def test_setting_an_unknown_attribute_is_refused_and_writes_nothing(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    assert_refused(ec, UnknownAttributeError, lambda: ec.set(g, "nosuch", "x"))


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
    ec: ExperimentController, name: str, value: object
) -> None:
    g = ec.register_resource("Plain")
    ec.set(g, "label", "kept")
    ec.set(g, "count", 3)
    before = ec.get(g, name)
    assert_refused(ec, AttributeValueError, lambda: ec.set(g, name, value))
    assert ec.get(g, name) == before


def test_the_same_bad_values_are_refused_by_the_attribute_itself(ec: ExperimentController) -> None:
    rm = ec.get_resource(ec.register_resource("Plain"))
    for name, value in BAD_VALUES:
        with pytest.raises(AttributeValueError):
            rm.get_attribute(name).validate(value)


def test_boundary_values_of_a_range_are_accepted(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    assert ec.set(g, "count", 0) == 0
    assert ec.set(g, "count", 10) == 10
    assert ec.get(g, "count") == 10


def test_a_readonly_attribute_cannot_be_set_by_the_user(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    assert_refused(ec, ReadOnlyAttributeError, lambda: ec.set(g, "serial", "S-1"))
    assert ec.get(g, "serial") is None


def test_critical_can_be_set_before_deploy_but_not_once_deploy_returned(ec: ExperimentController) -> None:
    early = ec.register_resource("Plain")
    g = ec.register_resource("Plain")
    assert ec.set(early, "critical", False) is False
    assert ec.get(early, "critical") is False
    ec.deploy([g])
    with pytest.raises(ReadOnlyAttributeError):
        ec.set(g, "critical", False)
    ec.wait_finished(g, timeout=20)
    assert ec.state(g) == ResourceState.FINISHED
    fields = ec.store.rm_all(g)
    with pytest.raises(ReadOnlyAttributeError):
        ec.set(g, "critical", False)
    assert ec.get(g, "critical") is True
    assert ec.store.rm_all(g) == fields


def test_an_application_command_is_settable_before_deploy_and_read_only_after(ec: ExperimentController) -> None:
    node = ec.register_resource("Node")
    app = ec.register_resource("Application")
    ec.register_connection(app, node)
    ec.set(app, "command", "echo one")
    ec.set(app, "command", "echo two")
    assert ec.get(app, "command") == "echo two"
    ec.deploy()
    ec.wait_finished(app, timeout=20)
    fields = ec.store.rm_all(app)
    with pytest.raises(ReadOnlyAttributeError):
        ec.set(app, "command", "rm -rf /")
    assert ec.get(app, "command") == "echo two"
    assert ec.store.rm_all(app) == fields


def test_a_readonly_attribute_cannot_be_set_through_set_with_conditions(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    other = ec.register_resource("Plain")
    assert_refused(
        ec,
        ReadOnlyAttributeError,
        lambda: ec.set_with_conditions("serial", "S-1", g, other, ResourceState.STARTED),
    )


def test_an_exec_readonly_attribute_cannot_be_set_through_set_with_conditions(ec: ExperimentController) -> None:
    """set_with_conditions sets once the RM is STARTED, i.e. always after deploy."""
    g = ec.register_resource("Plain")
    other = ec.register_resource("Plain")
    assert_refused(
        ec,
        ReadOnlyAttributeError,
        lambda: ec.set_with_conditions("critical", False, g, other, ResourceState.STARTED),
    )


def test_set_with_conditions_refuses_an_unknown_attribute(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    other = ec.register_resource("Plain")
    assert_refused(
        ec,
        UnknownAttributeError,
        lambda: ec.set_with_conditions("nosuch", 1, [g], [other], ResourceState.STARTED),
    )


@pytest.mark.parametrize(("name", "value"), [("count", 11), ("count", "abc"), ("mode", "c"), ("label", 3)])
def test_set_with_conditions_refuses_a_bad_value(ec: ExperimentController, name: str, value: object) -> None:
    g = ec.register_resource("Plain")
    other = ec.register_resource("Plain")
    assert_refused(
        ec,
        AttributeValueError,
        lambda: ec.set_with_conditions(name, value, [g], [other], ResourceState.STARTED),
    )


def test_set_with_conditions_refuses_a_malformed_time(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    other = ec.register_resource("Plain")
    assert_refused(
        ec,
        TimeFormatError,
        lambda: ec.set_with_conditions("label", "x", [g], [other], ResourceState.STARTED, "5 s"),
    )


def test_set_with_conditions_refuses_an_unknown_guid_in_its_condition(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    assert_refused(
        ec,
        ConditionError,
        lambda: ec.set_with_conditions("label", "x", [g], [g, UNKNOWN], ResourceState.STARTED),
    )


# -- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize("date", BAD_TIMES)
def test_schedule_refuses_a_malformed_date_and_schedules_nothing(ec: ExperimentController, date: str) -> None:
    g = ec.register_resource("Plain")
    rm = ec.get_resource(g)
    with pytest.raises(TimeFormatError):
        ec.schedule(date, lambda: None)
    assert_refused(ec, TimeFormatError, lambda: ec.schedule(date, functools.partial(rm.echo, 1), track=True))
    assert ec.store.pending_ids() == []
    # a well-formed date on the same callable is accepted: the date alone was the fault
    tid = ec.schedule("0s", functools.partial(rm.echo, 1), track=True)
    assert ec.get_task(tid) is not None


@pytest.mark.parametrize("time", BAD_TIMES)
def test_register_condition_refuses_a_malformed_time(ec: ExperimentController, time: str) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    assert_refused(
        ec, TimeFormatError, lambda: ec.register_condition(a, ResourceAction.START, b, ResourceState.STARTED, time)
    )
    assert ec.get_resource(a).conditions == {}


# -- conditions -------------------------------------------------------------------------------


def test_a_condition_waiting_on_an_unknown_guid_is_refused(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    assert_refused(
        ec, ConditionError, lambda: ec.register_condition(a, ResourceAction.START, [b, UNKNOWN], ResourceState.READY)
    )
    assert ec.get_resource(a).conditions == {}


def test_a_condition_on_an_unknown_guid_is_refused_for_every_guid(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    assert_refused(
        ec, UnknownGuidError, lambda: ec.register_condition([a, UNKNOWN], ResourceAction.START, b, ResourceState.READY)
    )
    assert ec.get_resource(a).conditions == {}


@pytest.mark.parametrize("action", [3, -1, "bogus", None, 1.5])
def test_a_condition_with_an_unknown_action_is_refused(ec: ExperimentController, action: object) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    assert_refused(ec, ConditionError, lambda: ec.register_condition(a, action, b, ResourceState.READY))
    assert ec.get_resource(a).conditions == {}


@pytest.mark.parametrize("state", [9, -1, "bogus", None, 2.5, "ready-ish"])
def test_a_condition_with_an_unknown_state_is_refused(ec: ExperimentController, state: object) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    assert_refused(ec, ConditionError, lambda: ec.register_condition(a, ResourceAction.START, b, state))
    assert ec.get_resource(a).conditions == {}


# -- traces --------------------------------------------------------------------------------------


def test_enabling_an_unknown_trace_is_refused(ec: ExperimentController) -> None:
    node = ec.register_resource("Node")
    app = ec.register_resource("Application")
    ec.register_connection(app, node)
    assert_refused(ec, UnknownTraceError, lambda: ec.enable_trace(app, "nosuch"))
    assert_refused(ec, UnknownTraceError, lambda: ec.enable_trace(node, "stdout"))
    assert_refused(ec, UnknownTraceError, lambda: ec.trace_enabled(app, "nosuch"))
    assert ec.trace_enabled(app, "stdout") is False


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


def test_scheduling_an_rm_method_with_a_non_json_argument_is_refused(ec: ExperimentController) -> None:
    g = ec.register_resource("Plain")
    rm = ec.get_resource(g)
    assert callable(rm.echo)
    assert_refused(ec, ActionError, lambda: ec.schedule("0s", functools.partial(rm.echo, object()), track=True))
    assert_refused(ec, ActionError, lambda: ec.schedule("0s", functools.partial(rm.echo, value={1, 2})))
    assert ec.store.pending_ids() == []
