"""The view of one run shared by the controller and by every worker.

Inside an RM method ``self.ec`` is a :class:`RunContext`: it reads and
changes the run through the store and turns ``schedule`` of an RM method
into a Celery task.  :class:`~nepi_dist.ec.ExperimentController` extends it
with the user's API.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .attribute import Flags
from .errors import (
    ActionError,
    ConditionError,
    ReadOnlyAttributeError,
    ResourceFailedError,
    UnknownGuidError,
)
from .resource import ResourceManager, ResourceRegistry
from .routing import queue_for
from .state import ResourceAction, ResourceState, ResourceState2str, state_from
from .store import Dispatch, FailureLevel, Payload, Store
from .timefuncs import delay_seconds, due_in

if TYPE_CHECKING:
    from celery import Celery

#: The Celery task that runs one RM action.
ACTION_TASK = "nepi.action"
#: Outbox entries are cleared (and the publisher's lease renewed) every this many publishes.
OUTBOX_CHUNK = 200
#: Methods that still run once the run is aborted or being released.
RELEASE_METHODS = frozenset({"release"})


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
    try:
        json.dumps([args, kwargs])
    except (TypeError, ValueError) as exc:
        raise ActionError(f"arguments of {name} must be JSON-serialisable: {exc}") from None
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

    # -- identity --------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def app(self) -> Celery:
        return self._app

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
        return self._registry.create(self._rtype(guid), self, guid)

    def _check_guids(self, guids: Iterable[int]) -> list[int]:
        guids = [guids] if isinstance(guids, int) else list(guids)
        for g in guids:
            if not isinstance(g, int) or isinstance(g, bool):
                raise UnknownGuidError(f"not a guid: {g!r}")
        missing = self._store.missing(guids)
        if missing:
            raise UnknownGuidError(f"no resource with guid {', '.join(map(str, missing))}")
        return guids

    def state(self, guid: int, hr: bool = False) -> int | str:
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
        try:
            act = ResourceAction(action)
        except ValueError:
            raise ConditionError(f"unknown action {action!r}") from None
        try:
            st = state_from(state)
        except (KeyError, ValueError):
            raise ConditionError(f"unknown state {state!r}") from None
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
        self.get_resource(guid).enable_trace(name)

    def trace_enabled(self, guid: int, name: str) -> bool:
        return self.get_resource(guid).trace_enabled(name)

    def trace(self, guid: int, name: str, attr: str = "all", block: int = 512, offset: int = 0) -> Any:
        return self.get_resource(guid).trace(name, attr, block, offset)

    # -- scheduling ----------------------------------------------------------------

    def schedule(self, date: Any, callback: Callable[..., Any], track: bool = False) -> Any:
        """Publish an RM method as a Celery task due at ``date``; return its id."""
        delay = due_in(date)
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

    def _drop_pending(self) -> int:
        """Forget every pending action of the run and revoke its Celery task; return how many."""
        dropped = self._store.drop_pending()
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
        if delay > self._horizon:
            self._store.add_timers(items)
        else:
            self._store.add_pending((aid, d) for aid, _, d in items)
            self._dispatch(items, from_outbox=False)
        return [aid for aid, _, _ in items]

    def _dispatch(self, items: Sequence[Dispatch], from_outbox: bool) -> None:
        """Publish decided actions as Celery tasks, each due at its Redis-clock time."""
        if not items:
            return
        offset = self._store.clock_offset
        local_now = self._store.now()
        sent: list[str] = []
        cleared = 0
        try:
            amqp = self._app.amqp
            with self._app.producer_or_acquire() as producer:
                for aid, payload, due in items:
                    if from_outbox and len(sent) - cleared >= OUTBOX_CHUNK:
                        self._store.clear_outbox(sent[cleared:])
                        cleared = len(sent)
                    eta = None
                    if due - local_now > 0.0005:
                        eta = datetime.datetime.fromtimestamp(due - offset, tz=datetime.UTC)
                    # Celery's own message format, published straight to the queue:
                    # send_task's routing and signal machinery costs ~40% more per message.
                    message = amqp.create_task_message(
                        self.task_id(aid),
                        ACTION_TASK,
                        [self.exp_id, self.run_id, aid, payload],
                        {},
                        eta=eta,
                    )
                    producer.publish(
                        message.body,
                        exchange="",
                        routing_key=queue_for(self, int(payload["g"])),
                        serializer="json",
                        headers=message.headers,
                        retry=True,
                        **message.properties,
                    )
                    sent.append(aid)
        except Exception:
            if not from_outbox:
                self._store.unpend([aid for aid, _, _ in items if aid not in sent])
            raise
        finally:
            if from_outbox:
                self._store.clear_outbox(sent[cleared:])

    def _transition(self, guid: int, state: ResourceState) -> bool:
        """Change an RM's state and publish what the change woke up."""
        result = self._store.transition(guid, state)
        if result.dispatch:
            now = self._store.now()
            self._dispatch([(aid, p, now) for aid, p in result.dispatch], from_outbox=True)
        return result.changed

    def _park_or_delay(self, payload: Payload, group: Sequence[int], state: int, delay: float) -> bool:
        """Return False when the condition holds now; else park or delay the action.

        Unmet: the action parks on the first RM it waits for and is published
        again by the transition that satisfies it.  Met but ``delay`` not yet
        elapsed since the last RM reached ``state`` (Redis clock): the action is
        published again, due at that moment.
        """
        parked = dict(payload, n=os.urandom(6).hex())
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
