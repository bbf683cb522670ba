"""A hypothesis fuzz of the controller's public API: every refusal is typed and writes nothing.

Each example is one call of the public API (``ExperimentController`` and the
RM handle's ``unregister_condition``) with random arguments, most of them bad:
ints out of range, bools, floats (nan, inf), strings, bytes, None, lists, sets,
dicts, iterators, plain objects, and now and then a good one.  A call that
raises must raise a :class:`~nepi_dist.errors.NepiError` (never a bare
TypeError, KeyError or redis-py error), and every key of the run must DUMP to
the same bytes after it as before it.  A call that is accepted may change the
run (that is what it is for); when it hands work to the worker, the run is let
settle before the next example, so that the next refusal compares a quiet run.

One controller (embedded Redis, in-process worker) serves every example; its
RMs are of a type of this file whose actions never schedule more work.
Accepted delays that would come due while the fuzz runs (between 0 and 10^6
seconds) are left out: the run would then change on its own in the middle of a
later refusal's before/after comparison.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nepi_dist import (
    Attribute,
    ExperimentController,
    Flags,
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    Trace,
    Types,
)
from nepi_dist.errors import NepiError, TimeFormatError
from nepi_dist.model.timefuncs import delay_seconds, due_in, timeout_seconds

from .test_bad_input import changed_keys, run_snapshot

#: Examples of the fuzz (the issue asks for >= 2,000 in ``make test``).
EXAMPLES = 2500


class FuzzPlain(ResourceManager):
    """The default lifecycle (no action schedules another) with one attribute of each kind."""

    _rtype = "FuzzPlain"

    @classmethod
    def _register_attributes(cls) -> None:
        super()._register_attributes()
        cls._register_attribute(Attribute("label", "Free text"))
        cls._register_attribute(Attribute("count", "A bounded int", type=Types.Integer, range=(0, 10)))
        cls._register_attribute(Attribute("ratio", "A double", type=Types.Double))
        cls._register_attribute(Attribute("flag", "A bool", type=Types.Bool))
        cls._register_attribute(Attribute("mode", "A choice", type=Types.Enumerate, allowed=["a", "b"]))
        cls._register_attribute(Attribute("serial", "Set by the RM", flags=Flags.ReadOnly))
        cls._register_attribute(Attribute("command", "Fixed once deployed", flags=Flags.ExecReadOnly))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("stdout", "Standard output"))

    def echo(self, value: object) -> object:
        """An action with one JSON argument and a JSON result."""
        return {"guid": self.guid, "value": value}


ResourceFactory.register_type(FuzzPlain)

RTYPE = FuzzPlain.get_rtype()
ATTRIBUTES = [a.name for a in FuzzPlain.get_attributes()]
#: Words that mean something to some call: names, trace attrs, dates, states, actions.
WORDS = [*ATTRIBUTES, RTYPE, "Plain", "stdout", "all", "stream", "path", "size", "0s", "5s", "0.5s", "1x",
         "99991231235959000000", "00010101000000000000", "20241301120000000000", "READY", "STARTED", "START",
         "nan", "inf", "-1", "1e400"]

ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**53 - 1, 2**53, 2**60, 2**63, 2**85, 10**6]),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.sampled_from(WORDS),
    st.builds(object),
)
#: Anything: atoms, and lists, tuples, sets, dicts and one-shot iterators of them.
ANY = st.recursive(
    ATOMS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.frozensets(st.integers(min_value=-3, max_value=10**6), max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.lists(inner, max_size=3).map(iter),
    ),
    max_leaves=5,
)


def quiet_delay(value: object, parse: Callable[[Any], float | None]) -> bool:
    """True unless ``value`` is accepted as a delay that would come due during the fuzz."""
    try:
        seconds = parse(value)
    except TimeFormatError:
        return True
    return seconds is not None and (seconds == 0 or seconds > 1e6)


def quick_timeout(value: object) -> bool:
    """True when a wait with this timeout is refused or returns within 0.1 s."""
    try:
        seconds = timeout_seconds(value)
    except TimeFormatError:
        return True
    return seconds is not None and seconds <= 0.1


class Fuzz:
    """Draws one call of the public API: (what, the call, whether it may hand work to the worker)."""

    def __init__(self, ec: ExperimentController, data: st.DataObject) -> None:
        self.ec = ec
        self.data = data
        self.resources = ec.resources
        # A guid of the run, drawn as an index: what hypothesis draws must not depend on the
        # run's state (it grows from one example to the next), only what the draw maps to.
        self.known = st.integers(min_value=0, max_value=2**16).map(lambda i: self.resources[i % len(self.resources)])

    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def guid(self, label: str = "guid") -> Any:
        return self.draw(st.one_of(self.known, ANY), label)

    def guids(self, label: str = "guids") -> Any:
        return self.draw(st.one_of(self.known, st.lists(self.known, max_size=3), ANY), label)

    def name(self, names: list[str], label: str = "name") -> Any:
        return self.draw(st.one_of(st.sampled_from(names), ANY), label)

    def value(self) -> Any:
        return self.draw(st.one_of(st.sampled_from(["x", 3, 0.5, True, "a", "true", "7"]), ANY), "value")

    def state(self) -> Any:
        return self.draw(st.one_of(st.sampled_from(list(ResourceState)), ANY), "state")

    def action(self) -> Any:
        return self.draw(st.one_of(st.sampled_from(list(ResourceAction)), ANY), "action")

    def condition_time(self) -> Any:
        time_ = self.draw(st.one_of(st.sampled_from([None, 0, "0s", "9999999h"]), ANY), "time")
        assume(quiet_delay(time_, delay_seconds))
        return time_

    def timeout(self) -> Any:
        timeout = self.draw(st.one_of(st.sampled_from([0, 0.01, 0.05]), ANY), "timeout")
        assume(quick_timeout(timeout))
        return timeout

    def flag(self, label: str) -> Any:
        return self.draw(st.one_of(st.booleans(), ANY), label)

    def call(self) -> tuple[str, Callable[[], object], bool]:
        ec = self.ec
        what = self.draw(st.sampled_from(sorted(CALLS)), "call")
        call, spawns = CALLS[what](self, ec)
        return what, call, spawns

    # -- the calls -------------------------------------------------------------

    def register_resource(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        rtype = self.name([RTYPE], "rtype")
        guid = self.draw(st.one_of(st.none(), st.integers(min_value=1, max_value=2**53 - 1), ANY), "guid")
        return lambda: ec.register_resource(rtype, guid), False

    def get(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, name = self.guid(), self.name(ATTRIBUTES)
        return lambda: ec.get(guid, name), False

    def set(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, name, value = self.guid(), self.name(ATTRIBUTES), self.value()
        return lambda: ec.set(guid, name, value), False

    def get_attributes(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid = self.guid()
        return lambda: ec.get_attributes(guid), False

    def get_resource(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid = self.guid()
        return lambda: ec.get_resource(guid), False

    def state_of(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, hr = self.guid(), self.flag("hr")
        return lambda: ec.state(guid, hr=hr), False

    def register_connection(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        first, second = self.guid("guid1"), self.guid("guid2")
        return lambda: ec.register_connection(first, second), False

    def register_condition(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        args = self.guids("guids1"), self.action(), self.guids("guids2"), self.state(), self.condition_time()
        return lambda: ec.register_condition(*args), False

    def unregister_condition(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        rm = ec.get_resource(self.draw(self.known, "rm"))
        group, action = self.guids("group"), self.draw(st.one_of(st.none(), st.sampled_from(list(ResourceAction)),
                                                                 ANY), "action")
        return lambda: rm.unregister_condition(group, action), False

    def set_with_conditions(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        args = (self.name(ATTRIBUTES), self.value(), self.guids("guids1"), self.guids("guids2"), self.state(),
                self.condition_time())
        return lambda: ec.set_with_conditions(*args), True

    def enable_trace(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, name = self.guid(), self.name(["stdout"])
        return lambda: ec.enable_trace(guid, name), False

    def trace_enabled(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, name = self.guid(), self.name(["stdout"])
        return lambda: ec.trace_enabled(guid, name), False

    def trace(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guid, name = self.guid(), self.name(["stdout"])
        attr = self.name(["all", "stream", "path", "size"], "attr")
        block, offset = (self.draw(st.one_of(st.integers(min_value=0, max_value=4096), ANY), n) for n in "bo")
        return lambda: ec.trace(guid, name, attr, block, offset), False

    def deploy(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guids = self.draw(st.one_of(st.none(), st.just([])), "none") if self.flag("all") is True else self.guids()
        wait_all_ready = self.flag("wait_all_ready")
        group = self.draw(st.one_of(st.none(), ANY), "group")
        return lambda: ec.deploy(guids, wait_all_ready=wait_all_ready, group=group), True

    def release(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        guids = self.guids()
        assume(guids is not None)  # releasing the whole run ends it
        timeout = self.draw(st.one_of(st.just(10.0), ANY), "timeout")
        try:
            seconds = timeout_seconds(timeout)
        except TimeFormatError:
            seconds = 0.0
        assume(seconds is not None and seconds <= 30)  # a valid timeout: how long a release may wait
        return lambda: ec.release(guids, timeout=timeout), True

    def step(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        method = getattr(ec, self.draw(st.sampled_from(["discover", "provision", "start", "stop"]), "step"))
        guid = self.guid()
        return lambda: method(guid), True

    def schedule(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        date = self.draw(st.one_of(st.sampled_from(["0s", "99991231235959000000", "00010101000000000000"]), ANY),
                         "date")
        rm = ec.get_resource(self.draw(self.known, "rm"))
        callback = self.draw(st.one_of(
            st.sampled_from([lambda: None, rm.echo, rm.start, rm.discover]),
            st.builds(functools.partial, st.sampled_from([rm.echo, rm.start]), ANY),
            ANY,
        ), "callback")
        track = self.flag("track")
        assume(quiet_delay(date, due_in))
        return lambda: ec.schedule(date, callback, track=track), True

    def get_task(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        tid = self.draw(st.one_of(st.integers(min_value=0, max_value=5), st.text(max_size=4), ANY), "tid")
        return lambda: ec.get_task(tid), False

    def wait(self, ec: ExperimentController) -> tuple[Callable[[], object], bool]:
        kind = self.draw(st.sampled_from(["wait_finished", "wait_started", "wait_deployed", "wait_released", "wait"]),
                         "kind")
        guids, timeout = self.guids(), self.timeout()
        if kind == "wait":
            state, quit = self.state(), self.draw(st.one_of(st.none(), st.just(lambda: False), ANY), "quit")
            return lambda: ec.wait(guids, state, quit, timeout), False
        method = getattr(ec, kind)
        return lambda: method(guids, timeout=timeout), False


CALLS: dict[str, Callable[[Fuzz, ExperimentController], tuple[Callable[[], object], bool]]] = {
    name: getattr(Fuzz, name)
    for name in ["register_resource", "get", "set", "get_attributes", "get_resource", "state_of",
                 "register_connection", "register_condition", "unregister_condition", "set_with_conditions",
                 "enable_trace", "trace_enabled", "trace", "deploy", "release", "step", "schedule", "get_task",
                 "wait"]
}


def settle(ec: ExperimentController, timeout: float = 20.0) -> None:
    """Block until the worker has nothing left of the run: no action pending, running or
    waiting to be published, and the run's keys unchanged for 50 ms."""
    client, keys = ec.store.client, ec.store.keys
    deadline = time.monotonic() + timeout
    last = run_snapshot(ec)
    while True:
        time.sleep(0.05)
        now = run_snapshot(ec)
        busy = client.zcard(keys.pending) + client.hlen(keys.running) + client.hlen(keys.outbox)
        if now == last and not busy:
            return
        assert time.monotonic() < deadline, f"the run never settled: {changed_keys(last, now)[:10]}, busy {busy}"
        last = now


def describe(ec: ExperimentController, before: dict[str, object], changed: list[str], history: list[str]) -> str:
    """Say what each changed key held before and holds now, and which calls came before."""
    now = run_snapshot(ec)
    lines = [f"{key}: {before.get(key)!r:.300} -> {now.get(key)!r:.300}" for key in changed]
    return "; ".join(lines) + f"; the calls before it: {history[-8:]}"


@pytest.fixture(scope="module")
def fuzz_run() -> Iterator[ExperimentController]:
    """One controller for every example, with RMs in several states to start from."""
    ec = ExperimentController(nthreads=4)
    try:
        guids = [ec.register_resource(RTYPE) for _ in range(6)]
        ec.register_connection(guids[0], guids[1])
        ec.register_condition(guids[2], ResourceAction.START, guids[3], ResourceState.STARTED)
        ec.deploy(guids[3:5])
        ec.wait_started(guids[3:5], timeout=20)
        settle(ec)
        yield ec
    finally:
        ec.shutdown()


def test_every_refused_call_of_the_public_api_raises_a_nepi_error_and_changes_no_key(
    fuzz_run: ExperimentController,
) -> None:
    ec = fuzz_run
    outcomes: Counter[str] = Counter()
    history: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(data=st.data())
    def one_call(data: st.DataObject) -> None:
        what, call, spawns = Fuzz(ec, data).call()
        before = run_snapshot(ec)
        try:
            call()
        except NepiError as exc:
            outcomes[f"refused {type(exc).__name__}"] += 1
            changed = changed_keys(before, run_snapshot(ec))
            history.append(f"{what}: {type(exc).__name__}")
            assert changed == [], f"{what} was refused ({exc!r}) but wrote: {describe(ec, before, changed, history)}"
            return
        except Exception as exc:  # the assertion of this test: nothing else may come out
            raise AssertionError(f"{what} raised {type(exc).__name__}, not a NepiError: {exc}") from exc
        outcomes["accepted"] += 1
        history.append(f"{what}: accepted{', settled' if spawns else ''}")
        if spawns:
            settle(ec)

    one_call()
    total = sum(outcomes.values())
    refused = total - outcomes["accepted"]
    print(f"\nfuzz: {total} calls, {refused} refused, {outcomes['accepted']} accepted: {dict(outcomes)}")
    assert total >= 2000
    assert refused > total / 2  # mostly bad arguments, as the fuzz means to send
    assert outcomes["accepted"] > 0
