"""Resource managers: NEPI's RM model, with the state kept in the run's store.

An RM instance is a thin, stateless handle (``ec``, ``guid``): every read
(``state``, ``get``, ``*_time``) goes to the store, so any worker can run the
next action of any RM.  Attributes and traces are declared per class as
metadata by ``_register_attributes`` / ``_register_traces``; a subclass
inherits its parent's declarations.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import redis

from nepi_dist.errors import (
    ArgumentTypeError,
    ConditionError,
    UnknownAttributeError,
    UnknownResourceTypeError,
    UnknownTraceError,
    shown,
)
from nepi_dist.model import secrets
from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.state import ResourceAction, ResourceState
from nepi_dist.model.timefuncs import delay_seconds
from nepi_dist.model.trace import Trace, TraceAttr, check_trace_args

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext
    from nepi_dist.engine.store import CheckResult, Store

#: NEPI's delay before an RM action asks to be run again (``self.ec.schedule(reschedule_delay, ...)``).
reschedule_delay = "1s"

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


def clsinit(cls: C) -> C:
    """Kept for NEPI compatibility: declarations are initialised by ``__init_subclass__``."""
    return cls


clsinit_copy = clsinit


def failtrap(func: F) -> F:
    """Set the RM to FAILED (recording the error) when ``func`` raises, then re-raise.

    A Redis outage is not the RM's failure: the action is cut short and runs again.
    """

    @functools.wraps(func)
    def wrapped(self: ResourceManager, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, *args, **kwargs)
        except redis.RedisError:
            raise
        except Exception as exc:
            if not getattr(exc, "_nepi_trapped", False):
                exc._nepi_trapped = True  # type: ignore[attr-defined]
                self.error(f"{func.__name__} failed: {exc}")
                self.debug(traceback.format_exc())
                self.fail(f"{type(exc).__name__}: {exc}")
            raise

    return wrapped  # type: ignore[return-value]


def check_name(value: Any, what: str) -> str:
    """Return ``value`` when it is a str (a resource type, attribute or trace name), else
    raise :class:`ArgumentTypeError`: a list or dict would fail a lookup with a bare TypeError."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"a {what} name is a str, not {shown(value)}")
    return value


_ACTIONS = frozenset(int(a) for a in ResourceAction)


def check_action(value: Any) -> ResourceAction:
    """Return the ResourceAction ``value`` names (an int, not a bool), else raise ConditionError."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _ACTIONS:
        return ResourceAction(value)
    raise ConditionError(f"unknown action {shown(value)}")


_UNSAFE_IN_NAME = re.compile(r"[^a-z0-9_.-]+")


def default_label(rtype: str, guid: int) -> str:
    """The label of an RM that was given none: its type's short name and its guid.

    ``linux::Application`` guid 2 is ``application-2``: a file name and an
    experiment file's key as it is (see :func:`nepi_dist.model.trace.result_file_name`).
    """
    short = _UNSAFE_IN_NAME.sub("-", rtype.rsplit("::", 1)[-1].lower()).strip("-.") or "rm"
    return f"{short}-{guid}"


def _encode(value: Any) -> str:
    return json.dumps(value)


class ResourceManager:
    """Base class of every resource manager (NEPI's lifecycle by default).

    deploy = discover -> provision -> READY; start from READY or STOPPED;
    stop from STARTED; release always ends RELEASED.
    """

    _rtype: ClassVar[str] = "Resource"
    #: Other names of this type (NEPI's, e.g. ``LinuxNode``): they resolve to ``_rtype``.
    #: Only the class that declares them has them; a subclass names its own.
    _aliases: ClassVar[tuple[str, ...]] = ()
    _help: ClassVar[str] = ""
    _platform: ClassVar[str] = ""
    _attributes: ClassVar[dict[str, Attribute]] = {}
    _traces: ClassVar[dict[str, Trace]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._init_declarations()

    @classmethod
    def _init_declarations(cls) -> None:
        parent = next(
            (b for b in cls.__mro__[1:] if issubclass(b, ResourceManager)), None
        )
        cls._attributes = dict(parent._attributes) if parent is not None else {}
        cls._traces = dict(parent._traces) if parent is not None else {}
        cls._register_attributes()
        cls._register_traces()

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(
            Attribute(
                "critical",
                "Whether the run aborts when this resource fails",
                type=Types.Bool,
                default=True,
                flags=Flags.ExecReadOnly,
            )
        )

    @classmethod
    def _register_traces(cls) -> None:
        """Declare traces (none by default)."""

    @classmethod
    def _register_attribute(cls, attr: Attribute) -> None:
        """Declare ``attr``, found under its name and each of its aliases.

        A declaration that replaces an inherited one (same name) takes its
        aliases away from the old one too.
        """
        cls._remove_attribute(attr.name)
        for name in attr.names:
            old = cls._attributes.get(name)
            if old is not None and old is not attr:
                cls._remove_attribute(old.name)
            cls._attributes[name] = attr

    @classmethod
    def _remove_attribute(cls, name: str) -> None:
        attr = cls._attributes.get(name)
        if attr is not None:
            for other in attr.names:
                if cls._attributes.get(other) is attr:
                    del cls._attributes[other]

    @classmethod
    def _register_trace(cls, trace: Trace) -> None:
        cls._traces[trace.name] = trace

    @classmethod
    def rtype(cls) -> str:
        return cls._rtype

    get_rtype = rtype

    @classmethod
    def aliases(cls) -> tuple[str, ...]:
        """The other names this type is found by (its own declaration, not its parent's)."""
        return tuple(vars(cls).get("_aliases", ()))

    @classmethod
    def get_attributes(cls) -> list[Attribute]:
        """Every declared attribute once (an alias is not a second attribute)."""
        return list({id(a): a for a in cls._attributes.values()}.values())

    @classmethod
    def get_attribute(cls, name: str) -> Attribute:
        check_name(name, "attribute")
        try:
            return cls._attributes[name]
        except KeyError:
            raise UnknownAttributeError(
                f"{cls._rtype} has no attribute {name!r} "
                f"(known: {', '.join(sorted(cls._attributes))})"
            ) from None

    @classmethod
    def get_traces(cls) -> list[Trace]:
        return list(cls._traces.values())

    @classmethod
    def get_help(cls) -> str:
        return cls._help

    @classmethod
    def get_platform(cls) -> str:
        return cls._platform

    # -- instance ------------------------------------------------------------

    def __init__(self, ec: RunContext, guid: int) -> None:
        self._ec = ec
        self._guid = guid
        self._logger = logging.getLogger(f"nepi_dist.rm.{self._rtype}")
        # The state this action's gate read a moment ago, for the lifecycle step it lets
        # through (deploy, start, stop) to check instead of reading it again.
        self._gated_state: ResourceState | None = None
        # True when this action resumes a run of itself that was cut short (its worker died,
        # or Redis failed it): a start then goes on from STARTED, the state it had reached.
        self._resumed = False

    def __repr__(self) -> str:
        return f"<{self._rtype} guid={self._guid}>"

    @property
    def guid(self) -> int:
        return self._guid

    @property
    def ec(self) -> RunContext:
        return self._ec

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def _store(self) -> Store:
        return self._ec.store

    @property
    def state(self) -> ResourceState:
        """The current state, read from the store."""
        return ResourceState(self._store.state(self._guid))

    def _time(self, state: ResourceState) -> float | None:
        value = self._store.rm_field(self._guid, f"t{int(state)}")
        return None if value is None else float(value)

    @property
    def discover_time(self) -> float | None:
        return self._time(ResourceState.DISCOVERED)

    @property
    def provision_time(self) -> float | None:
        return self._time(ResourceState.PROVISIONED)

    @property
    def ready_time(self) -> float | None:
        return self._time(ResourceState.READY)

    @property
    def start_time(self) -> float | None:
        return self._time(ResourceState.STARTED)

    @property
    def stop_time(self) -> float | None:
        return self._time(ResourceState.STOPPED)

    @property
    def finish_time(self) -> float | None:
        return self._time(ResourceState.FINISHED)

    @property
    def failed_time(self) -> float | None:
        return self._time(ResourceState.FAILED)

    @property
    def release_time(self) -> float | None:
        return self._time(ResourceState.RELEASED)

    def state_time(self, state: ResourceState) -> float | None:
        """Return when the RM last entered ``state`` (Redis clock), or None."""
        return self._time(state)

    @property
    def error_message(self) -> str | None:
        """The error recorded when the RM failed, if any."""
        return self._store.rm_field(self._guid, "err")

    @property
    def label(self) -> str:
        """The name the experiment file gave this RM, else :func:`default_label` (``application-2``)."""
        return self._store.rm_field(self._guid, "label") or default_label(self._rtype, self._guid)

    @property
    def deployment_group(self) -> int | None:
        value = self._store.rm_field(self._guid, "grp")
        return None if value is None else int(value)

    # -- logging -------------------------------------------------------------

    def _log(self, level: int, msg: str) -> None:
        self._logger.log(level, "guid %s - %s", self._guid, msg)

    def debug(self, msg: str) -> None:
        self._log(logging.DEBUG, msg)

    def info(self, msg: str) -> None:
        self._log(logging.INFO, msg)

    def warning(self, msg: str) -> None:
        self._log(logging.WARNING, msg)

    def error(self, msg: str) -> None:
        self._log(logging.ERROR, msg)

    # -- attributes ----------------------------------------------------------

    def get(self, name: str) -> Any:
        """Return the attribute's value (its default when never set)."""
        attr = self.get_attribute(name)
        raw = self._store.rm_field(self._guid, f"a:{attr.name}")
        value = attr.default if raw is None else json.loads(raw)
        if attr.is_credential:
            secrets.remember(value)
        return value

    def set(self, name: str, value: Any) -> Any:
        """Set an attribute from inside the RM (flags are the user's limits, not the RM's)."""
        attr = self.get_attribute(name)
        value = attr.validate(value)
        if attr.set_hook is not None:
            value = attr.set_hook(self.get(name), value)
        if attr.is_credential:
            secrets.remember(value)
        self._store.set_fields(self._guid, {f"a:{attr.name}": _encode(value)})
        return value

    def has_changed(self, name: str) -> bool:
        """Return True when the attribute was set (differs from its declaration)."""
        return self._store.rm_field(self._guid, f"a:{self.get_attribute(name).name}") is not None

    # -- private state (the RM's own bookkeeping, shared by every worker) ---------

    def _put(self, **values: Any) -> None:
        """Record RM-internal values (JSON) in the store."""
        self._store.set_fields(self._guid, {f"p:{k}": _encode(v) for k, v in values.items()})

    def _got(self, name: str, default: Any = None) -> Any:
        """Return an RM-internal value recorded by :meth:`_put`."""
        raw = self._store.rm_field(self._guid, f"p:{name}")
        return default if raw is None else json.loads(raw)

    # -- traces --------------------------------------------------------------

    def _trace_declared(self, name: str) -> Trace:
        check_name(name, "trace")
        try:
            return self._traces[name]
        except KeyError:
            raise UnknownTraceError(f"{self._rtype} has no trace {name!r}") from None

    def enable_trace(self, name: str) -> None:
        self._trace_declared(name)
        self._store.set_fields(self._guid, {f"tr:{name}": "1"})

    def trace_enabled(self, name: str) -> bool:
        trace = self._trace_declared(name)
        flag = self._store.rm_field(self._guid, f"tr:{name}")
        return flag == "1" or (flag is None and trace.enabled)

    def trace(
        self, name: str, attr: str = TraceAttr.ALL, block: int = 512, offset: int = 0
    ) -> Any:
        """Return trace data; RMs that record traces override this."""
        self._trace_declared(name)
        check_trace_args(attr, block, offset)
        return None

    # -- connections ---------------------------------------------------------

    @property
    def connections(self) -> builtins.set[int]:
        return self._store.connections(self._guid)

    def register_connection(self, guid: int) -> None:
        """Connect to another RM (both directions)."""
        self._ec.register_connection(self._guid, guid)

    def get_connected(self, rtype: str | None = None) -> list[ResourceManager]:
        """Return the connected RMs, of type ``rtype`` when given."""
        rms = [self._ec.get_resource(g) for g in sorted(self.connections)]
        if rtype is None:
            return rms
        wanted = {rtype} | {rm.rtype() for rm in rms if rtype in rm.aliases()}
        return [rm for rm in rms if rm.rtype() in wanted]

    # -- conditions ----------------------------------------------------------

    @property
    def conditions(self) -> dict[ResourceAction, list[tuple[list[int], ResourceState, Any]]]:
        """The registered conditions: action -> [(group, state, time)]."""
        return _parse_conditions(self._store.rm_field(self._guid, "cond"))

    def register_condition(
        self, action: ResourceAction | int, group: int | Iterable[int], state: Any, time: Any = None
    ) -> None:
        """Let ``action`` happen only once every RM of ``group`` reached ``state``,
        and ``time`` has elapsed since the last of them did."""
        act, grp, st = self._ec._validate_condition(action, group, state, time)

        def add(conds: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
            conds = conds or {}
            conds.setdefault(str(int(act)), []).append([grp, int(st), time])
            return conds

        self._store.update_json_field(self._guid, "cond", add)

    def unregister_condition(
        self, group: int | Iterable[int], action: ResourceAction | int | None = None
    ) -> None:
        """Remove the guids of ``group`` from the conditions (of ``action`` only, if given)."""
        drop = set(self._ec._check_guids(group, known=False))
        if action is not None:
            check_action(action)

        def remove(conds: dict[str, list[Any]] | None) -> dict[str, list[Any]]:
            result: dict[str, list[Any]] = {}
            for act, lst in (conds or {}).items():
                if action is not None and int(act) != int(action):
                    result[act] = lst
                    continue
                kept = []
                for grp, st, t in lst:
                    rest = [g for g in grp if g not in drop]
                    if rest:
                        kept.append([rest, st, t])
                if kept:
                    result[act] = kept
            return result

        self._store.update_json_field(self._guid, "cond", remove)

    # -- state setters -------------------------------------------------------

    def _set_state(
        self, state: ResourceState, through: Sequence[ResourceState] = (), allowed_from: Sequence[ResourceState] = ()
    ) -> bool:
        self._gated_state = None
        return self._ec._transition(self._guid, state, through, allowed_from)

    def set_discovered(self) -> bool:
        return self._set_state(ResourceState.DISCOVERED)

    def set_provisioned(self) -> bool:
        return self._set_state(ResourceState.PROVISIONED)

    def set_ready(self) -> bool:
        return self._set_state(ResourceState.READY)

    def set_started(self) -> bool:
        return self._set_state(ResourceState.STARTED)

    def set_stopped(self) -> bool:
        return self._set_state(ResourceState.STOPPED)

    def set_finished(self) -> bool:
        return self._set_state(ResourceState.FINISHED)

    def set_failed(self) -> bool:
        return self._set_state(ResourceState.FAILED)

    def set_released(self) -> bool:
        return self._set_state(ResourceState.RELEASED)

    def fail(self, message: str | None = None) -> None:
        """Set FAILED, recording ``message`` as the RM's error."""
        if message:
            self._store.set_fields(self._guid, {"err": secrets.redact(message)[:4000]})
        self.set_failed()

    # -- lifecycle (NEPI semantics) --------------------------------------------

    def _released(self) -> bool:
        return self.state == ResourceState.RELEASED

    def _lifecycle_state(self) -> ResourceState:
        """The state a lifecycle step checks: what its gate just read (once), else a fresh read."""
        state, self._gated_state = self._gated_state, None
        return self.state if state is None else state

    def _overrides(self, name: str) -> bool:
        """True when this RM's class replaces the default ``name`` method."""
        return getattr(type(self), name) is not getattr(ResourceManager, name)

    def _start_states(self) -> tuple[ResourceState, ...]:
        """The states a start may begin from; a resumed start goes on from STARTED too.

        NEPI's RMs may do several steps in one start (``set_started()``, work,
        ``set_finished()``); one cut short between them is carried to its end.
        """
        if self._resumed:
            return (ResourceState.READY, ResourceState.STOPPED, ResourceState.STARTED)
        return (ResourceState.READY, ResourceState.STOPPED)

    def _default_deploy(self) -> bool:
        """True when this RM's class keeps every step of the default ``do_deploy``: they only transition."""
        return not any(self._overrides(name) for name in _DEPLOY_STEPS)

    # The default do_* methods only transition, and a transition never changes a
    # RELEASED RM: the released check (one Redis read) is needed only for overrides.

    @failtrap
    def discover(self) -> None:
        if not self._overrides("do_discover") or not self._released():
            self.do_discover()

    @failtrap
    def provision(self) -> None:
        if not self._overrides("do_provision") or not self._released():
            self.do_provision()

    @failtrap
    def deploy(self) -> None:
        state = self._lifecycle_state()
        if state > ResourceState.READY:
            self.error(f"Wrong state {state.name} for deploy")
            return
        if state != ResourceState.RELEASED:
            self.do_deploy()

    @failtrap
    def start(self) -> None:
        state = self._lifecycle_state()
        if state not in self._start_states():
            self.error(f"Wrong state {state.name} for start")
            return
        self.do_start()

    @failtrap
    def stop(self) -> None:
        state = self._lifecycle_state()
        if state != ResourceState.STARTED:
            self.error(f"Wrong state {state.name} for stop")
            return
        self.do_stop()

    @failtrap
    def finish(self) -> None:
        if not self._overrides("do_finish") or not self._released():
            self.do_finish()

    def release(self) -> None:
        """Release the RM; never raises.

        ``do_release`` ends in ``set_released`` (the default does) or defers
        itself (e.g. until connected RMs are released); when it raises, the RM
        is marked RELEASED anyway.
        """
        if self._released():
            return
        try:
            self.do_release()
        except Exception as exc:
            self.error(f"release failed: {exc}")
            self.debug(traceback.format_exc())
            self.set_released()

    def do_discover(self) -> None:
        self.set_discovered()

    def do_provision(self) -> None:
        self.set_provisioned()

    def do_deploy(self) -> None:
        state = self.state
        if self._default_deploy():
            # Each default step only transitions: go through them in one atomic step.
            through = [s for s in (ResourceState.DISCOVERED, ResourceState.PROVISIONED) if state < s]
            self._set_state(ResourceState.READY, through)
            return
        if state < ResourceState.DISCOVERED:
            self.discover()
        if state < ResourceState.PROVISIONED:
            self.provision()
        self.set_ready()

    def do_start(self) -> None:
        self.set_started()

    def do_stop(self) -> None:
        self.set_stopped()

    def do_finish(self) -> None:
        self.set_finished()

    def do_release(self) -> None:
        self.set_released()

    def do_fail(self) -> None:
        self.set_failed()

    # -- actions gated by conditions -------------------------------------------

    def _gate(
        self,
        method: str,
        args: list[Any],
        conditions: ResourceAction | list[tuple[list[int], int, Any]],
        lowest: ResourceState | None = None,
        allowed: tuple[ResourceState, ...] = (),
    ) -> bool:
        """Return True when the action may run now; otherwise park or delay it.

        ``conditions``: the list to check, or the action whose registered
        conditions apply: then the state, the conditions and their verdicts
        come in one round trip, and the state is handed to the deploy, start
        or stop the gate lets through, which need not read it again.
        ``lowest``/``allowed``: the RM's own state must be in ``allowed``;
        below ``lowest`` the action parks on the RM itself, above it is dropped.
        """
        payload = {"g": self._guid, "m": method, "a": args}
        state: ResourceState | None = None
        checks: list[CheckResult] = []
        lifecycle = False
        if isinstance(conditions, ResourceAction):
            lifecycle = True
            # One round trip: the state, the conditions, and each condition judged.
            view = self._store.gate(self._guid, int(conditions))
            state = self.state if view.state is None else ResourceState(view.state)  # raises when unknown
            conditions = [(g, int(st), t) for g, st, t in _parse_conditions(view.cond).get(conditions, [])]
            checks = view.checks
        if allowed:
            if state is None:
                state = self.state  # raises when the RM is unknown
            if state not in allowed and lowest is not None and state < lowest:
                if self._ec._park_or_delay(payload, [self._guid], lowest, 0.0):
                    return False
                # It reached ``lowest`` since it was read (a deploy on another thread): read it again.
                state = self.state
            if state not in allowed:
                self.debug(f"{method} dropped: state is {state.name}")
                return False
        for i, (group, st, after) in enumerate(conditions):
            judged = checks[i] if i < len(checks) else None
            if self._ec._park_or_delay(payload, group, st, delay_seconds(after), judged):
                return False
        if lifecycle:
            self._gated_state = state  # for the deploy/start/stop this gate lets through
        return True

    @failtrap
    def deploy_with_conditions(self) -> None:
        if self._gate("deploy_with_conditions", [], ResourceAction.DEPLOY):
            self.deploy()

    @failtrap
    def start_with_conditions(self) -> None:
        if self._gate(
            "start_with_conditions",
            [],
            ResourceAction.START,
            ResourceState.READY,
            self._start_states(),
        ):
            self.start()

    @failtrap
    def stop_with_conditions(self) -> None:
        if self._gate(
            "stop_with_conditions",
            [],
            ResourceAction.STOP,
            ResourceState.STARTED,
            (ResourceState.STARTED,),
        ):
            self.stop()

    @failtrap
    def set_with_conditions(
        self, name: str, value: Any, group: int | list[int], state: Any, time: Any = None
    ) -> None:
        """Set ``name`` to ``value`` once STARTED and the condition holds."""
        _, grp, st = self._ec._validate_condition(ResourceAction.START, group, state, time)
        if self._gate(
            "set_with_conditions",
            [name, value, grp, int(st), time],
            [(grp, int(st), time)],
            ResourceState.STARTED,
            (ResourceState.STARTED,),
        ):
            self.set(name, value)


#: What ``do_deploy`` calls on its way to READY; when a class replaces none of them they only transition.
_DEPLOY_STEPS = ("discover", "do_discover", "set_discovered", "provision", "do_provision", "set_provisioned",
                 "set_ready")


def _parse_conditions(raw: str | None) -> dict[ResourceAction, list[tuple[list[int], ResourceState, Any]]]:
    """Decode an RM's ``cond`` field: action -> [(group, state, time)]."""
    conds = json.loads(raw) if raw else {}
    return {
        ResourceAction(int(a)): [(list(g), ResourceState(s), t) for g, s, t in lst]
        for a, lst in conds.items()
    }


class ResourceRegistry:
    """The resource types a process knows, by rtype name.

    Workers only ever instantiate classes registered here (by the user's
    process, by entry points, or by modules they were told to load); a message
    names an rtype, never code.
    """

    def __init__(self, entry_points: bool = True) -> None:
        self._types: dict[str, type[ResourceManager]] = {}
        self._aliases: dict[str, str] = {}
        self._load_entry_points = entry_points

    def register_type(self, rclass: type[ResourceManager]) -> type[ResourceManager]:
        """Register ``rclass`` under its rtype and its aliases (usable as a class decorator)."""
        if not (isinstance(rclass, type) and issubclass(rclass, ResourceManager)):
            raise TypeError(f"{rclass!r} is not a ResourceManager subclass")
        rtype = rclass.rtype()
        for name in (rtype, *rclass.aliases()):
            other = self._aliases.get(name, name if name in self._types else None)
            if other is not None and other != rtype:
                raise TypeError(f"{rclass.__name__}: the name {name!r} is already the type {other!r}")
        self._types[rtype] = rclass
        self._aliases.update(dict.fromkeys(rclass.aliases(), rtype))
        return rclass

    def resource_types(self) -> dict[str, type[ResourceManager]]:
        """Every registered type once, by its own rtype (aliases: :meth:`aliases`)."""
        return dict(self._types)

    def aliases(self) -> dict[str, str]:
        """Every alias with the rtype it names (``{"LinuxNode": "linux::Node", ...}``)."""
        return dict(self._aliases)

    def canonical(self, rtype: str) -> str:
        """The rtype that ``rtype`` names: itself, or the type it is an alias of."""
        return self.get_resource_type(rtype).rtype()

    def load_entry_points(self) -> None:
        """Register the RM types published in the ``nepi_dist.resources`` entry point group."""
        from importlib.metadata import entry_points

        self._load_entry_points = False
        for ep in entry_points(group="nepi_dist.resources"):
            self.register_module(ep.load())

    def register_module(self, target: object) -> None:
        """Register every ResourceManager subclass with its own ``_rtype`` that a module defines."""
        members = [target] if isinstance(target, type) else list(vars(target).values())
        for obj in members:
            if (isinstance(obj, type) and issubclass(obj, ResourceManager) and obj is not ResourceManager
                    and "_rtype" in vars(obj)):
                self.register_type(obj)

    def get_resource_type(self, rtype: str) -> type[ResourceManager]:
        check_name(rtype, "resource type")
        if rtype not in self._types and rtype not in self._aliases and self._load_entry_points:
            self.load_entry_points()
        try:
            return self._types[self._aliases.get(rtype, rtype)]
        except KeyError:
            raise UnknownResourceTypeError(
                f"unknown resource type {rtype!r} (registered: {', '.join(sorted(self._types))})"
            ) from None

    def create(self, rtype: str, ec: RunContext, guid: int) -> ResourceManager:
        return self.get_resource_type(rtype)(ec, guid)


#: The process's default registry, NEPI's ``ResourceFactory``.
ResourceFactory = ResourceRegistry()

ResourceManager._init_declarations()

