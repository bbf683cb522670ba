"""The view of one run shared by the controller and by every worker.

Inside an RM method ``self.ec`` is a :class:`RunContext`: it reads and
changes the run through the store and turns ``schedule`` of an RM method
into a Celery task.  :class:`~nepi_dist.ec.ExperimentController` extends it
with the user's API.
"""

from __future__ import annotations

import base64
import datetime
import functools
import inspect
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nepi_dist.engine.batch import BATCH_SPREAD, BATCH_TASK, batches, current_buffer
from nepi_dist.engine.connection import outage_bound
from nepi_dist.engine.heartbeat import live_queues
from nepi_dist.engine.routing import POOL_QUEUE, host_queue, queue_for, route_many, this_worker_host
from nepi_dist.engine.signing import sign
from nepi_dist.engine.store import CheckResult, Dispatch, FailureLevel, Payload, Store
from nepi_dist.errors import (
    ActionError,
    ArgumentTypeError,
    ConditionError,
    GuidRangeError,
    GuidTypeError,
    NoWorkerError,
    ReadOnlyAttributeError,
    RemoteReadError,
    ResourceFailedError,
    UnknownGuidError,
    shown,
)
from nepi_dist.model.attribute import Flags
from nepi_dist.model.resource import ResourceManager, ResourceRegistry, check_action, check_name
from nepi_dist.model.state import ResourceAction, ResourceState, ResourceState2str, state_from
from nepi_dist.model.timefuncs import delay_seconds, due_in
from nepi_dist.model.trace import check_trace_args

if TYPE_CHECKING:
    from celery import Celery

#: The Celery task that runs one RM action.
ACTION_TASK = "nepi.action"
#: Outbox entries are cleared (and the publisher's lease renewed) every this many publishes.
OUTBOX_CHUNK = 200
#: Methods that still run once the run is aborted or being released.
RELEASE_METHODS = frozenset({"release"})
#: The Celery task that runs one read of an RM on another host's worker.
READ_TASK = "nepi.read"
#: RM methods that a read task may run: they change nothing.
READ_METHODS = frozenset({"trace"})
#: Seconds a remote read waits for its answer (override: app conf ``nepi_read_timeout``).
READ_TIMEOUT = 60.0
#: Guids are below this: Redis' Lua scripts hold numbers as doubles, exact only up to 2**53.
MAX_GUID = 2**53


#: The root of every run's local folder when the controller is given no ``local_dir``.
LOCAL_DIR_ENV = "NEPI_DIST_RESULTS_DIR"


def default_local_dir() -> str:
    """``$NEPI_DIST_RESULTS_DIR``, else the system's temporary folder (NEPI 3.1's default)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(LOCAL_DIR_ENV) or tempfile.gettempdir()))


def check_guid(value: Any) -> int:
    """Return ``value`` as a guid, or raise: the one check of a guid's type and bounds.

    A guid is an ``int`` (a bool is not one) in [1, 2**53).  Every public call
    that takes guids checks them here (through :meth:`RunContext._check_guids`
    for lists) before it reads or writes anything.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise GuidTypeError(f"a guid is an int, not {shown(value)}")
    if not 1 <= value < MAX_GUID:
        raise GuidRangeError(f"a guid is an int in [1, 2**53), not {shown(value)}")
    return int(value)


def resolve_action(rm: ResourceManager, name: str) -> Callable[..., Any]:
    """Return the bound RM method ``name``, refusing anything that is not one.

    Only public or single-underscore methods defined by a ResourceManager
    class qualify; dunder names and non-callables are refused.
    """
    if not name.isidentifier() or name.startswith("__"):
        raise ActionError(f"{name!r} is not an RM action")
    for klass in type(rm).__mro__:
        if name in vars(klass):
            if not issubclass(klass, ResourceManager):
                break
            member = getattr(rm, name)
            if callable(member):
                return member
            break
    raise ActionError(f"{type(rm).__name__} has no action {name!r}")


@functools.lru_cache(maxsize=1024)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    """The signature of an RM method's function (cached: schedule runs in every action)."""
    return inspect.signature(func)


def as_action(callback: Any) -> tuple[int, str, list[Any], dict[str, Any]] | None:
    """Return (guid, method, args, kwargs) when ``callback`` is an RM method call."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    while isinstance(callback, functools.partial):
        args = list(callback.args) + args
        kwargs = {**callback.keywords, **kwargs}
        callback = callback.func
    owner = getattr(callback, "__self__", None)
    if not isinstance(owner, ResourceManager):
        return None
    name = callback.__name__
    resolve_action(owner, name)
    check_guid(owner.guid)
    try:
        json.dumps([args, kwargs], allow_nan=False)  # JSON has no nan or inf: Lua's cjson would refuse it
    except (TypeError, ValueError) as exc:
        raise ActionError(f"arguments of {name} must be JSON-serialisable: {exc}") from None
    try:  # refused here, not on the worker (where a lifecycle step would fail its RM)
        _signature(callback.__func__).bind(owner, *args, **kwargs)
    except TypeError as exc:
        raise ActionError(f"{name} does not take these arguments: {exc}") from None
    return owner.guid, name, args, kwargs


class RunContext:
    """One run's store, Celery app and resource types, as seen by RM code."""

    def __init__(
        self,
        store: Store,
        app: Celery,
        registry: ResourceRegistry,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._app = app
        self._registry = registry
        self._logger = logger or logging.getLogger("nepi_dist")
        self._rtypes: dict[int, str] = {}
        self._routes: dict[int, str] = {}
        self._aid_prefix = os.urandom(4).hex()
        self._aids = itertools.count(1)
        self._horizon = float(app.conf.get("nepi_eta_horizon", 60.0))
        self._read_timeout = float(app.conf.get("nepi_read_timeout", READ_TIMEOUT))
        # A publish rides out a broker restart as long as any other Redis call does: retries
        # 0.1 s, 0.6 s, then every 1 s, for the outage bound.
        self._retry_policy = {"max_retries": int(outage_bound()) + 2, "interval_start": 0.1,
                              "interval_step": 0.5, "interval_max": 1.0}

    # -- identity --------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def app(self) -> Celery:
        return self._app

    @property
    def registry(self) -> ResourceRegistry:
        """The resource types this run's RMs are made from."""
        return self._registry

    @property
    def exp_id(self) -> str:
        return self._store.exp_id

    @property
    def run_id(self) -> str:
        return self._store.run_id

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def local_dir(self) -> str:
        """The root of the run's local files: the controller's ``local_dir`` (kept with the run)."""
        return self._store.run_field("ldir") or default_local_dir()

    @property
    def exp_dir(self) -> str:
        """``<local_dir>/<exp_id>``: the folder of every run of the experiment."""
        return os.path.join(self.local_dir, self.exp_id)

    @property
    def run_dir(self) -> str:
        """``<local_dir>/<exp_id>/<run_id>``: this run's results (the Collector writes here)."""
        return os.path.join(self.exp_dir, self.run_id)

    @property
    def failure_level(self) -> int:
        return self._store.failure_level()

    @property
    def abort(self) -> bool:
        """True once a critical RM failed or the controller itself failed."""
        return self.failure_level != FailureLevel.OK

    @property
    def resources(self) -> list[int]:
        return self._store.guids()

    # -- resources -------------------------------------------------------------

    def _rtype(self, guid: int) -> str:
        rtype = self._rtypes.get(guid)
        if rtype is None:
            rtype = self._store.rm_field(guid, "rtype")
            if rtype is None:
                raise UnknownGuidError(f"no resource with guid {guid}")
            self._rtypes[guid] = rtype
        return rtype

    def get_resource(self, guid: int) -> ResourceManager:
        """Return a handle on the RM ``guid`` (its reads go to the store)."""
        guid = check_guid(guid)
        return self._registry.create(self._rtype(guid), self, guid)

    def _check_guids(self, guids: int | Iterable[int], known: bool = True) -> list[int]:
        """Return ``guids`` (an int or an iterable of ints) as a list without duplicates,
        in their first order; each one through :func:`check_guid`, and with ``known``
        every one must name an RM of the run (one round trip).  Raises GuidTypeError,
        GuidRangeError or UnknownGuidError."""
        if isinstance(guids, int) and not isinstance(guids, bool):
            items: list[Any] = [guids]
        elif isinstance(guids, (str, bytes, bytearray, Mapping)) or not isinstance(guids, Iterable):
            raise GuidTypeError(f"a guid or an iterable of guids, not {shown(guids)}")
        else:
            items = list(guids)
        checked = list(dict.fromkeys(check_guid(g) for g in items))
        if known:
            missing = self._store.missing(checked)
            if missing:
                raise UnknownGuidError(f"no resource with guid {', '.join(map(str, missing))}")
        return checked

    def filter_resources(self, rtype: str) -> list[int]:
        """Return the guids of the RMs of type ``rtype`` (ours or NEPI's name), ascending."""
        wanted = self._registry.canonical(check_name(rtype, "resource type"))
        guids = self._store.guids()
        return [g for g, t in zip(guids, self._store.field_of_many(guids, "rtype"), strict=True) if t == wanted]

    def get_resources_by_type(self, rtype: str) -> list[ResourceManager]:
        """Return a handle on every RM of type ``rtype``, by ascending guid."""
        return [self.get_resource(g) for g in self.filter_resources(rtype)]

    def get_attribute(self, guid: int, name: str) -> Any:
        """Return the declaration (:class:`~nepi_dist.model.attribute.Attribute`) of ``name`` on ``guid``."""
        return self.get_resource(guid).get_attribute(name)

    def get_traces(self, guid: int) -> list[Any]:
        """Return the traces (:class:`~nepi_dist.model.trace.Trace`) the type of ``guid`` declares."""
        return self.get_resource(guid).get_traces()

    def get_global(self, rtype: str, name: str) -> Any:
        """Return the run's global value of attribute ``name`` for type ``rtype``, else its default."""
        rclass = self._registry.get_resource_type(check_name(rtype, "resource type"))
        attr = rclass.get_attribute(name)
        raw = self._store.run_field(f"g:{rclass.rtype()}:{name}")
        return attr.default if raw is None else json.loads(raw)

    def _state_time(self, guid: int, state: ResourceState) -> float | None:
        return self.get_resource(guid).state_time(state)

    def get_discover_time(self, guid: int) -> float | None:
        """When ``guid`` was DISCOVERED (Redis clock, epoch seconds), or None."""
        return self._state_time(guid, ResourceState.DISCOVERED)

    def get_provision_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.PROVISIONED)

    def get_ready_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.READY)

    def get_start_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.STARTED)

    def get_stop_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.STOPPED)

    def get_finish_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.FINISHED)

    def get_failed_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.FAILED)

    def get_release_time(self, guid: int) -> float | None:
        return self._state_time(guid, ResourceState.RELEASED)

    def state(self, guid: int, hr: bool = False) -> int | str:
        guid = check_guid(guid)
        if not isinstance(hr, bool):
            raise ArgumentTypeError(f"hr is a bool, not {shown(hr)}")
        state = self._store.state(guid)
        return ResourceState2str[state] if hr else ResourceState(state)

    def get(self, guid: int, name: str) -> Any:
        return self.get_resource(guid).get(name)

    def set(self, guid: int, name: str, value: Any) -> Any:
        """Set an attribute as the user: flags apply, nothing is written on error."""
        rm = self.get_resource(guid)
        attr = rm.get_attribute(name)
        if attr.has_flag(Flags.ReadOnly):
            raise ReadOnlyAttributeError(f"attribute {name!r} of {rm.rtype()} is read-only")
        if attr.has_flag(Flags.ExecReadOnly):
            state, group = self._store.rm_fields(guid, "state", "grp")
            if group is not None or int(state or 0) > ResourceState.NEW:
                raise ReadOnlyAttributeError(
                    f"attribute {name!r} of guid {guid} cannot change once deployed"
                )
        return rm.set(name, value)

    def get_attributes(self, guid: int) -> list[Any]:
        return self.get_resource(guid).get_attributes()

    def register_connection(self, guid1: int, guid2: int) -> None:
        self._check_guids([guid1, guid2])
        self._store.connect(guid1, guid2)

    def _validate_condition(
        self, action: Any, group: Any, state: Any, time: Any
    ) -> tuple[ResourceAction, list[int], ResourceState]:
        act = check_action(action)
        try:
            st = state_from(state)
        except (KeyError, ValueError):
            raise ConditionError(f"unknown state {shown(state)}") from None
        try:
            grp = self._check_guids(group)
        except UnknownGuidError as exc:
            raise ConditionError(f"condition on an unknown guid: {exc}") from None
        delay_seconds(time)
        return act, grp, st

    def register_condition(
        self, guids1: Any, action: Any, guids2: Any, state: Any, time: Any = None
    ) -> None:
        """Let ``action`` of every RM of guids1 wait for every RM of guids2 to reach ``state``."""
        self._validate_condition(action, guids2, state, time)
        for g in self._check_guids(guids1):
            self.get_resource(g).register_condition(action, guids2, state, time)

    # -- traces ------------------------------------------------------------------

    def enable_trace(self, guid: int, name: str) -> None:
        rm = self.get_resource(guid)
        rm.enable_trace(check_name(name, "trace"))

    def trace_enabled(self, guid: int, name: str) -> bool:
        rm = self.get_resource(guid)
        return rm.trace_enabled(check_name(name, "trace"))

    def trace(self, guid: int, name: str, attr: str = "all", block: int = 512, offset: int = 0) -> Any:
        """Return trace data, read through the host's worker when only that worker reaches the host."""
        rm = self.get_resource(guid)
        check_name(name, "trace")
        check_trace_args(attr, block, offset)
        queue = self._remote_queue(guid)
        if queue is None:
            return rm.trace(name, attr, block, offset)
        rm._trace_declared(name)  # an unknown trace fails here, before anything is sent
        return self._read_remote(queue, guid, "trace", [name, attr, block, offset])

    # -- scheduling ----------------------------------------------------------------

    def schedule(self, date: Any, callback: Callable[..., Any], track: bool = False) -> Any:
        """Publish an RM method as a Celery task due at ``date``; return its id."""
        delay = due_in(date)
        if not isinstance(track, bool):
            raise ArgumentTypeError(f"track is a bool, not {shown(track)}")
        action = as_action(callback)
        if action is None:
            raise ActionError(
                "only RM methods (possibly in functools.partial) can be scheduled from a worker"
            )
        guid, method, args, kwargs = action
        return self._send([(guid, method, args, kwargs)], delay, track)[0]

    def task_id(self, aid: str) -> str:
        """Return the Celery task id of action ``aid`` (what a revoke names)."""
        return f"{self.exp_id}.{self.run_id}.{aid}"

    def _drop_pending(self, for_abort: bool = False) -> int:
        """Forget every pending action of the run and revoke its Celery task; return how many.

        ``for_abort``: the drop an abort does, once (a later release's actions are left alone).
        """
        dropped = self._store.drop_pending(for_abort)
        if dropped:
            self._app.control.revoke([self.task_id(aid) for aid in dropped])
        return len(dropped)

    def _new_aid(self) -> str:
        return f"{self._aid_prefix}{next(self._aids)}"

    def _send(
        self,
        calls: Sequence[tuple[int, str, list[Any], dict[str, Any]]],
        delay: float = 0.0,
        track: bool = False,
    ) -> list[str]:
        """Publish new actions (after recording them as pending); return their ids."""
        due = self._store.now() + delay
        items: list[Dispatch] = []
        for guid, method, args, kwargs in calls:
            payload: Payload = {"g": guid, "m": method}
            if args:
                payload["a"] = args
            if kwargs:
                payload["k"] = kwargs
            if track:
                payload["t"] = 1
            items.append((self._new_aid(), payload, due))
        if track:
            for aid, _, _ in items:
                self._store.track(aid)
        buffer = current_buffer(self)
        if delay > self._horizon:
            self._store.add_timers(items)
        elif buffer is not None:
            self._store.add_outbox(items)
            buffer.add(items)
        else:
            self._store.add_pending(items)
            self._dispatch(items, from_outbox=False)
        return [aid for aid, _, _ in items]

    def _publish(
        self, producer: Any, task: str, task_id: str, args: list[Any], queue: str,
        eta: datetime.datetime | None = None, expires: float | None = None,
    ) -> None:
        """Publish one task message straight to ``queue`` (JSON, Celery's own format).

        ``send_task``'s routing and signal machinery costs ~40% more per message.
        Its ``argsrepr`` (what Flower and Celery's events show) names the run,
        the actions and their methods, never their arguments (a value set may
        be a credential).
        """
        shadow, argsrepr = self._display(task, args, queue)
        message = self._app.amqp.create_task_message(task_id, task, args, {}, eta=eta, expires=expires,
                                                     shadow=shadow, argsrepr=argsrepr, kwargsrepr="{}")
        key = getattr(self._app, "nepi_signing_key", None)
        if key is not None:
            sign(key, message.headers, message.body, queue)
        producer.publish(
            message.body,
            exchange="",
            routing_key=queue,
            serializer="json",
            headers=message.headers,
            retry=True,
            retry_policy=self._retry_policy,
            **message.properties,
        )

    def _display(self, task: str, args: list[Any], queue: str) -> tuple[str, str]:
        """Return the name and arguments a task shows in Celery's events and Flower (the ``shadow``
        and ``argsrepr`` headers): ``nepi.start``, ``start guid=4 (linux::Application on nepi.host.h1)
        run=exp/run``.  The registered name (``nepi.action``) is unchanged: routing is by queue."""
        where = f"run={self.exp_id}/{self.run_id}"
        if task == ACTION_TASK:
            payload = args[3]
            method = str(payload.get("m", "?")).removesuffix("_with_conditions")
            guid = payload.get("g")
            rtype = self._rtypes.get(guid, "?") if isinstance(guid, int) else "?"
            return f"nepi.{method}", f"{method} guid={guid} ({rtype} on {queue}) {where} aid={args[2]}"
        if task == BATCH_TASK:
            items = args[2]
            methods = sorted({str(p.get("m", "?")).removesuffix("_with_conditions") for _, p in items})
            guids = ",".join(str(p.get("g")) for _, p in items[:8]) + ("…" if len(items) > 8 else "")
            name = f"nepi.batch.{methods[0]}" if len(methods) == 1 else "nepi.batch"
            return name, f"{len(items)} actions {'/'.join(methods)} guids={guids} (on {queue}) {where}"
        if task == READ_TASK:
            payload = args[3]
            return f"nepi.read.{payload.get('m')}", f"{payload.get('m')} guid={payload.get('g')} {where}"
        return task, repr(args)[:200]

    def _dispatch(self, items: Sequence[Dispatch], from_outbox: bool, spread: int = BATCH_SPREAD) -> None:
        """Publish decided actions as Celery tasks, each due at its Redis-clock time.

        Actions bound for the same queue at the same moment (the deploys of one
        ``ec.deploy``, the starts a deployment group releases, a release) travel
        in batches: see :mod:`nepi_dist.engine.batch`.
        """
        if not items:
            return
        offset = self._store.clock_offset
        local_now = self._store.now()
        sent: list[str] = []
        cleared = 0
        try:
            route_many(self, (int(p["g"]) for _, p, _ in items))
            with self._app.producer_or_acquire() as producer:
                for queue, due, chunk in batches(items, functools.partial(queue_for, self), spread):
                    if from_outbox and len(sent) - cleared >= OUTBOX_CHUNK:
                        self._store.clear_outbox(sent[cleared:])
                        cleared = len(sent)
                    eta = None
                    if due - local_now > 0.0005:
                        eta = datetime.datetime.fromtimestamp(due - offset, tz=datetime.UTC)
                    first = chunk[0][0]
                    args: list[Any]
                    if len(chunk) == 1:
                        task, args = ACTION_TASK, [self.exp_id, self.run_id, first, chunk[0][1]]
                    else:
                        task, args = BATCH_TASK, [self.exp_id, self.run_id, [[aid, p] for aid, p, _ in chunk]]
                    # A batch's task id is its first action's: revoking that action revokes the batch.
                    self._publish(producer, task, self.task_id(first), args, queue, eta=eta)
                    sent.extend(aid for aid, _, _ in chunk)
        except Exception:
            if not from_outbox:
                done = set(sent)
                self._store.unpend([aid for aid, _, _ in items if aid not in done])
            raise
        finally:
            if from_outbox:
                self._store.clear_outbox(sent[cleared:])

    # -- reads through another host's worker ---------------------------------------

    def _remote_queue(self, guid: int) -> str | None:
        """Return the host queue of ``guid`` when only that host's worker can read it, else None."""
        queue = queue_for(self, guid)
        if queue == POOL_QUEUE:
            return None
        host = this_worker_host()
        return None if host is not None and queue == host_queue(host) else queue

    def _read_remote(self, queue: str, guid: int, method: str, args: list[Any]) -> Any:
        """Run the read ``method`` of ``guid`` on the worker serving ``queue``; return its value.

        The controller (or a worker) publishes a read task and blocks on its
        reply list; no claim, no state change: a read is idempotent.
        """
        client = self._store.client
        if queue not in live_queues(client):
            raise NoWorkerError(f"no live worker serves {queue}, where guid {guid} runs: "
                                f"start `nepi-dist worker --host {queue.rsplit('.', 1)[-1]}` on that host")
        rid = self._new_aid()
        with self._app.producer_or_acquire() as producer:
            self._publish(producer, READ_TASK, self.task_id(f"read-{rid}"),
                          [self.exp_id, self.run_id, rid, {"g": guid, "m": method, "a": args}],
                          queue, expires=self._read_timeout)
        got = client.blpop([self._store.keys.reply(rid)], timeout=self._read_timeout)
        if got is None:
            raise RemoteReadError(f"{method} of guid {guid}: no answer from {queue} "
                                  f"within {self._read_timeout:g}s")
        answer = json.loads(got[1])
        if "e" in answer:
            raise RemoteReadError(f"{method} of guid {guid} on {queue}: {answer['e']}")
        return base64.b64decode(answer["b"]) if "b" in answer else answer["v"]

    def _transition(
        self, guid: int, state: ResourceState, through: Sequence[ResourceState] = (),
        allowed_from: Sequence[ResourceState] = (),
    ) -> bool:
        """Change an RM's state (by way of ``through``; only from ``allowed_from`` when given)
        and publish what the change woke up."""
        result = self._store.transition(guid, state, horizon=self._horizon, through=through,
                                        allowed_from=allowed_from)
        if result.dispatch:
            buffer = current_buffer(self)
            if buffer is not None:
                buffer.add(result.dispatch)  # the transition's script put them in the outbox already
            else:
                self._dispatch(result.dispatch, from_outbox=True)
        return result.changed

    def _park_or_delay(
        self, payload: Payload, group: Sequence[int], state: int, delay: float, judged: CheckResult | None = None
    ) -> bool:
        """Return False when the condition holds now; else park or delay the action.

        Unmet: the action parks on the first RM it waits for, with ``delay``,
        and the transition that satisfies it publishes it again due ``delay``
        later (when it runs it checks again: the group's other RMs may still be
        behind).  Met but ``delay`` not yet elapsed since the last RM reached
        ``state`` (Redis clock): the action is published again, due at that moment.
        ``judged``: the condition's verdict already read (by the gate); only a
        met one is trusted, anything else is decided here.
        """
        result = judged
        if result is None or result.outcome != "ok":  # decide (and park) atomically
            parked = {k: v for k, v in payload.items() if k != "d"}
            parked["n"] = os.urandom(6).hex()
            if delay > 0:
                parked["d"] = delay
            result = self._store.check(group, state, parked)
        if result.outcome == "parked":
            return True
        if result.outcome == "failed":
            raise ResourceFailedError(
                f"Resource {payload['g']} can not wait for FAILED critical resource "
                f"{group[result.index - 1]}"
            )
        if result.outcome == "unknown":
            raise UnknownGuidError(f"no resource with guid {group[result.index - 1]}")
        if delay > 0:
            remaining = result.last + delay - result.now
            if remaining > 0.001:
                self._send(
                    [(int(payload["g"]), payload["m"], payload.get("a", []), payload.get("k", {}))],
                    remaining,
                )
                return True
        return False
