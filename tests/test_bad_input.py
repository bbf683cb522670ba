"""Bad input gets a specific error from nepi_dist.errors and changes nothing.

Every case checks the exception class (all subclass NepiError) and that the
run's state is the same afterwards: every key of the run in Redis, DUMPed
just before and just after the refused call, plus the value, conditions or
resources the call named.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.scheduler import TaskStatus
from nepi_dist.errors import (
    ActionError,
    ArgumentTypeError,
    ArgumentValueError,
    AttributeValueError,
    ConditionError,
    DuplicateGuidError,
    ExperimentIdError,
    GuidRangeError,
    GuidTypeError,
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


@pytest.fixture
def fresh(run: ExperimentController) -> Iterator[ExperimentController]:
    """A run of its own (on the same Redis and worker) for tests that use up its guids."""
    controller = ExperimentController(redis_url=run.redis_url, local_worker=False, nthreads=2)
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


def run_snapshot(ec: ExperimentController) -> dict[str, object]:
    """Return every key of the run with the exact bytes of its value: its ``DUMP``.

    Except for a hash or a set in the ``hashtable`` encoding: its DUMP follows
    the order of Redis' dict, which a mere read can change (each lookup moves an
    incremental rehash on: an RM hash with a long ``cond`` DUMPs differently
    after an HMGET), so it is taken as its sorted content.  ``running`` (which
    worker holds which action) is left out: a worker may still be clearing its
    entry for an action whose effect a test waited for.  So are ``publishing``, a
    publisher's lease that expires on its own (10 s after the last publish of an
    earlier step), and ``keeper``, the lease a worker's keeper renews every sweep.
    """
    client = ec.store.client
    volatile = {ec.store.keys.running, ec.store.keys.publishing, ec.store.keys.keeper}
    keys = sorted(k for k in client.scan_iter(match=ec.store.keys.pattern(), count=1000) if k not in volatile)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.object("encoding", key)
        pipe.dump(key)
    replies = pipe.execute()
    snap: dict[str, object] = {}
    unordered: list[tuple[str, str]] = []
    for i, key in enumerate(keys):
        kind, encoding, dump = replies[3 * i: 3 * i + 3]
        if encoding == "hashtable" and kind in ("hash", "set"):
            unordered.append((key, kind))
        else:
            snap[key] = dump
    pipe = client.pipeline(transaction=False)
    for key, kind in unordered:
        if kind == "hash":
            pipe.hgetall(key)
        else:
            pipe.smembers(key)
    for (key, kind), content in zip(unordered, pipe.execute(), strict=True):
        snap[key] = (kind, "hashtable", sorted(content.items() if kind == "hash" else content))
    return snap


def changed_keys(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Return the keys added, removed or changed between two :func:`run_snapshot`s."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


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
    assert changed_keys(before, run_snapshot(ec)) == []


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


# -- guids: type, bounds, exactness ----------------------------------------------------------------------


@pytest.mark.parametrize(("guid", "error"), [
    (2**53, GuidRangeError), (2**60, GuidRangeError), (2**85, GuidRangeError), (10**5000, GuidRangeError),
    (0, GuidRangeError), (-1, GuidRangeError),
    (True, GuidTypeError), (1.0, GuidTypeError), ("7", GuidTypeError), ([7], GuidTypeError),
], ids=["2**53", "2**60", "2**85", "10**5000", "0", "-1", "True", "1.0", "str", "list"])
def test_an_explicit_guid_outside_1_to_2_53_is_refused_and_registers_nothing(
    run: ExperimentController, guid: object, error: type[NepiError]
) -> None:
    """2**60 was accepted (the next two automatic guids then came out equal) and 2**85 was
    registered before DuplicateGuidError: the script's Lua doubles are exact only below 2**53."""
    assert_refused(run, error, lambda: run.register_resource("Plain", guid=guid))
    assert_refused(run, UnknownResourceTypeError, lambda: run.register_resource("NoSuchType", guid=guid))
    assert issubclass(error, UnknownGuidError)


def test_automatic_guids_after_a_large_explicit_one_are_exact_up_to_2_53(fresh: ExperimentController) -> None:
    """Lua writes a number with 14 digits (100000000000001 became the key ``rm:1e+14``): the
    script now formats each guid as an integer, and refuses to go past 2**53 - 1."""
    ec = fresh
    for start in (10**14, 2**53 - 3):
        assert ec.register_resource("Plain", guid=start) == start
        autos = [ec.register_resource("Plain"), ec.register_resource("Plain")]
        assert autos == [start + 1, start + 2]
        for g in autos:
            ec.set(g, "label", f"rm {g}")
        assert [ec.get(g, "label") for g in autos] == [f"rm {g}" for g in autos]
    assert ec.resources[-1] == 2**53 - 1
    keys = list(ec.store.client.scan_iter(match=ec.store.keys.pattern()))
    assert not [k for k in keys if "e+" in k]
    assert ec.store.client.exists(ec.store.keys.rm(2**53 - 1))
    assert_refused(ec, GuidRangeError, lambda: ec.register_resource("Plain"))
    assert ec.register_resource("Plain", guid=5) == 5  # an explicit guid below still registers


def test_a_deployment_group_starts_an_rm_whose_guid_has_15_digits(fresh: ExperimentController) -> None:
    g = fresh.register_resource("Plain", guid=10**14 + 1)
    fresh.deploy([g])
    fresh.wait_finished(g, timeout=3)
    assert fresh.state(g) == ResourceState.FINISHED


NOT_GUIDS = [[1], {}, set(), None, 1.5, "1", True, object()]


@pytest.mark.parametrize("bad", NOT_GUIDS, ids=[type(b).__name__ for b in NOT_GUIDS])
def test_a_guid_that_is_not_an_int_is_a_typed_error_everywhere(run: ExperimentController, bad: object) -> None:
    """``ec.get([1], "label")``, ``ec.set({}, ...)``, ``ec.trace(set(), ...)`` raised "unhashable type"."""
    g = run.register_resource("Plain")
    calls: list[Callable[[], object]] = [
        lambda: run.get(bad, "label"), lambda: run.set(bad, "label", "x"), lambda: run.trace(bad, "stdout"),
        lambda: run.state(bad), lambda: run.get_resource(bad), lambda: run.get_attributes(bad),
        lambda: run.enable_trace(bad, "stdout"), lambda: run.trace_enabled(bad, "stdout"),
        lambda: run.start(bad), lambda: run.register_connection(g, bad),
    ]
    for call in calls:
        assert_refused(run, GuidTypeError, call)
    listed: list[Callable[[], object]] = [
        lambda: run.deploy([g, bad]), lambda: run.release([g, bad]), lambda: run.wait_finished([g, bad], timeout=1),
        lambda: run.register_condition([g, bad], ResourceAction.START, g, ResourceState.READY),
        lambda: run.get_resource(g).unregister_condition([g, bad]),
    ]
    if bad is not None:  # deploy(None) and release(None) mean every RM
        for call in listed:
            assert_refused(run, GuidTypeError, call)
    assert_refused(run, ConditionError,
                   lambda: run.register_condition(g, ResourceAction.START, [bad], ResourceState.READY))
    assert run.state(g) == ResourceState.NEW


def test_register_condition_of_none_is_a_typed_error(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, GuidTypeError, lambda: run.register_condition(None, ResourceAction.START, g, "READY"))
    assert run.get_resource(g).conditions == {}


# -- names, flags and trace arguments -------------------------------------------------------------------


@pytest.mark.parametrize("name", [["label"], {"label": 1}, None, 5, b"label"], ids=["list", "dict", "None", "int",
                                                                                   "bytes"])
def test_a_name_that_is_not_a_str_is_an_argument_type_error(run: ExperimentController, name: object) -> None:
    g = run.register_resource("Plain")
    node = run.register_resource("Node")
    for call in [lambda: run.get(g, name), lambda: run.set(g, name, "x"), lambda: run.register_resource(name),
                 lambda: run.enable_trace(g, name), lambda: run.trace_enabled(g, name), lambda: run.trace(g, name),
                 lambda: run.set_with_conditions(name, "x", g, node, ResourceState.STARTED),
                 lambda: run.enable_trace(node, name)]:
        assert_refused(run, ArgumentTypeError, call)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"attr": "bogus"}, ArgumentValueError), ({"attr": None}, ArgumentTypeError),
    ({"block": -1}, ArgumentValueError), ({"block": 1.5}, ArgumentTypeError), ({"block": True}, ArgumentTypeError),
    ({"offset": -3}, ArgumentValueError), ({"offset": "0"}, ArgumentTypeError),
], ids=["attr-bogus", "attr-None", "block-neg", "block-float", "block-bool", "offset-neg", "offset-str"])
def test_a_bad_trace_attr_block_or_offset_is_refused(
    run: ExperimentController, kwargs: dict[str, object], error: type[NepiError]
) -> None:
    node = run.register_resource("Node")
    app = run.register_resource("Application")
    run.register_connection(app, node)
    assert_refused(run, error, lambda: run.trace(app, "stdout", **kwargs))
    assert run.trace(app, "stdout", attr="size", block=0, offset=0) is None  # the bounds are inclusive


def test_bad_flags_and_states_of_state_deploy_and_wait_are_refused(run: ExperimentController) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, ArgumentTypeError, lambda: run.state(g, hr="yes"))
    assert_refused(run, ArgumentTypeError, lambda: run.deploy([g], wait_all_ready=1))
    for group, error in [("x", ArgumentTypeError), (1.5, ArgumentTypeError), (True, ArgumentTypeError),
                         (0, ArgumentValueError), (2**53, ArgumentValueError)]:
        assert_refused(run, error, lambda group=group: run.deploy([g], group=group))
    assert_refused(run, ArgumentValueError, lambda: run.wait([g], 42, timeout=0.1))
    assert_refused(run, ArgumentTypeError, lambda: run.wait([g], ResourceState.READY, quit=5, timeout=0.1))
    assert_refused(run, ArgumentTypeError, lambda: run.get_task([1]))
    assert run.get_task("no-such-task") is None
    assert run.state(g) == ResourceState.NEW


# -- numbers too large, not finite, or not numbers ------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("count", 10**5000), ("count", 2**63), ("runtime", 10**400), ("runtime", float("nan")),
    ("runtime", float("inf")), ("runtime", "1e400"), ("runtime", "-inf"),
], ids=["int-5000-digits", "int-2**63", "double-from-huge-int", "nan", "inf", "text-1e400", "text-minus-inf"])
def test_a_number_json_cannot_hold_is_refused_as_an_attribute_value(
    run: ExperimentController, name: str, value: object
) -> None:
    g = run.register_resource("Plain")
    assert_refused(run, AttributeValueError, lambda: run.set(g, name, value))


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "5", True, [1], 10**400],
                         ids=["nan", "inf", "-1", "str", "bool", "list", "huge"])
def test_a_bad_timeout_is_refused_before_a_wait_or_a_release_does_anything(
    run: ExperimentController, timeout: object
) -> None:
    """release(timeout="x") used to send the releases, then fail in the wait."""
    g = run.register_resource("Plain")
    assert_refused(run, TimeFormatError, lambda: run.wait_finished(g, timeout=timeout))
    assert_refused(run, TimeFormatError, lambda: run.release([g], timeout=timeout))
    assert run.state(g) == ResourceState.NEW


@pytest.mark.parametrize("date", [float("nan"), float("inf"), 10**400, "9" * 400 + "s", "5s\n", "00010101000000000000"],
                         ids=["nan", "inf", "huge", "400-digits", "newline", "year-1"])
def test_a_delay_that_is_not_a_finite_date_is_refused(run: ExperimentController, date: object) -> None:
    g = run.register_resource("Plain")
    rm = run.get_resource(g)
    assert_refused(run, TimeFormatError, lambda: run.schedule(date, rm.start))
    assert_refused(run, TimeFormatError, lambda: run.register_condition(g, ResourceAction.START, g, "READY", date))


def test_scheduling_what_cannot_run_is_refused_at_schedule_time(run: ExperimentController) -> None:
    """A wrong arity used to reach the worker, where a lifecycle step failed its RM (and the run)."""
    g = run.register_resource("Plain")
    rm = run.get_resource(g)
    assert_refused(run, ActionError, lambda: run.schedule("0s", functools.partial(rm.start, 1)))
    assert_refused(run, ActionError, lambda: run.schedule("0s", rm.echo))
    assert_refused(run, ActionError, lambda: run.schedule("0s", functools.partial(rm.echo, 1, extra=2)))
    assert_refused(run, ActionError, lambda: run.schedule("0s", functools.partial(rm.echo, float("nan"))))
    assert_refused(run, ActionError, lambda: run.schedule("0s", 5))
    assert_refused(run, ArgumentTypeError, lambda: run.schedule("0s", rm.start, track="yes"))
    ghost = type(rm)(run, UNKNOWN)  # a handle on a guid the run lacks
    assert_refused(run, UnknownGuidError, lambda: run.schedule("0s", ghost.start))
    assert run.state(g) == ResourceState.NEW


def test_unregister_condition_refuses_a_bad_group_or_action(run: ExperimentController) -> None:
    a = run.register_resource("Plain")
    b = run.register_resource("Plain")
    run.register_condition(a, ResourceAction.START, b, ResourceState.STARTED)
    rm = run.get_resource(a)
    assert_refused(run, GuidTypeError, lambda: rm.unregister_condition(None))
    assert_refused(run, GuidTypeError, lambda: rm.unregister_condition([[b]]))
    assert_refused(run, ConditionError, lambda: rm.unregister_condition(b, action=7))
    assert_refused(run, ConditionError, lambda: rm.unregister_condition(b, action="START"))
    assert rm.conditions == {ResourceAction.START: [([b], ResourceState.STARTED, None)]}
    rm.unregister_condition(b, ResourceAction.START)
    assert rm.conditions == {}


# -- deploy ---------------------------------------------------------------------------------------------


def test_deploying_a_guid_twice_in_one_call_deploys_and_starts_it_once(run: ExperimentController) -> None:
    """The group counted g twice (pending 2, one READY to bring it down): g never started."""
    g = run.register_resource("Plain")
    gid = run.deploy([g, g])
    run.wait_finished(g, timeout=20)
    assert run.state(g) == ResourceState.FINISHED
    assert run.store.client.hget(run.store.keys.group(gid), "pending") == "0"
    assert run.store.rm_all(g)["t4"]  # it went through STARTED


def test_deploying_an_iterator_of_guids_deploys_them(run: ExperimentController) -> None:
    """The emptiness check consumed an iterator: deploy(iter([g])) deployed nothing."""
    g = run.register_resource("Plain")
    run.deploy(iter([g]))
    run.wait_finished(g, timeout=20)
    assert run.state(g) == ResourceState.FINISHED


# -- far dates ---------------------------------------------------------------------------------------------


def test_a_far_date_waits_and_a_near_callable_still_runs_after_it(run: ExperimentController) -> None:
    """A year-9999 date killed the scheduler thread (OverflowError in Condition.wait): no local
    callable and no worker-wait deadline ran after it."""
    far = run.schedule("99991231235959000000", lambda: "far", track=True)
    near = threading.Event()
    run.schedule("0.1s", near.set)
    assert near.wait(10), "a near callable did not run after a far one was scheduled"
    task = run.get_task(far)
    assert task is not None and task.status == TaskStatus.NEW
    assert run._local._thread.is_alive()
    g = run.register_resource("Plain")
    run.schedule("99991231235959000000", run.get_resource(g).start)  # an action: held in the run's timers
    assert any('"m": "start"' in m and f'"g": {g}' in m
               for m in run.store.client.zrange(run.store.keys.timers, 0, -1))


# -- the controller's own arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"local_dirs": "/tmp/x"}, {"nthread": 4}, {"visibility_timeout": 4},
                                    {"eta_horizon": 1.0}], ids=["local_dirs", "nthread", "visibility", "horizon"])
def test_an_unknown_controller_keyword_is_a_type_error_before_anything_starts(
    redis_server: EmbeddedRedis, kwargs: dict[str, object]
) -> None:
    """Any keyword used to be taken as a Celery setting (a misspelt local_dir or nthreads)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(TypeError):
            ExperimentController(redis_url=redis_server.url, local_worker=False, **kwargs)
        assert client.dbsize() == 0
    finally:
        client.close()


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"celery_settings": {"eta_horizon": "soon"}}, ArgumentValueError),
    ({"celery_settings": {"eta_horizon": 400, "visibility_timeout": 300}}, ArgumentValueError),
    ({"celery_settings": [("eta_horizon", 1)]}, ArgumentTypeError),
    ({"celery_settings": {1: 2}}, ArgumentTypeError),
    ({"nthreads": 0}, ArgumentValueError), ({"nthreads": "4"}, ArgumentTypeError),
    ({"local_worker": "no"}, ArgumentTypeError), ({"exp_id": 5}, ArgumentTypeError),
    ({"registry": {}}, ArgumentTypeError),
], ids=["horizon-word", "horizon-above-visibility", "settings-list", "settings-int-key", "nthreads-0",
        "nthreads-str", "local_worker-str", "exp_id-int", "registry-dict"])
def test_bad_controller_arguments_are_typed_errors_and_write_nothing(
    redis_server: EmbeddedRedis, kwargs: dict[str, object], error: type[NepiError]
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(error):
            ExperimentController(**{"redis_url": redis_server.url, "local_worker": False, **kwargs})
        assert client.dbsize() == 0
    finally:
        client.close()


def test_celery_settings_go_in_their_own_argument(redis_server: EmbeddedRedis) -> None:
    ec = ExperimentController(redis_url=redis_server.url, local_worker=False,
                              celery_settings={"eta_horizon": 2.5, "visibility_timeout": 30})
    try:
        assert ec.app.conf.nepi_eta_horizon == 2.5
        assert ec.app.conf.nepi_visibility_timeout == 30
    finally:
        ec.shutdown()


@pytest.mark.parametrize("name,value", [("NEPI_NTHREADS", "many"), ("NEPI_NTHREADS", "0"),
                                        ("NEPI_DIST_RETENTION", "a week"), ("NEPI_DIST_RETENTION", "-1")])
def test_a_malformed_setting_in_the_environment_is_a_typed_error_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ArgumentValueError, match=name):
        ExperimentController()
