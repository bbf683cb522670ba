"""The ExperimentController: NEPI's user API over Celery workers and Redis.

Describing an experiment writes to the run's keys in Redis; ``deploy``
publishes one Celery task per RM action; workers run them; waits block on
the run's event stream.  With no Redis URL the controller starts the
embedded default (a private redis-server and an in-process worker) and stops
both at :meth:`shutdown`.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis

from nepi_dist.engine import ending
from nepi_dist.engine.celery_app import REDIS_URL_ENV, create_app, default_threads
from nepi_dist.engine.connection import check_no_eviction, durability_warning, redis_client, typed_error
from nepi_dist.engine.context import MAX_GUID, RunContext, as_action, check_guid, default_local_dir
from nepi_dist.engine.embedded import EmbeddedRedis, EmbeddedWorker
from nepi_dist.engine.failure import FailureManager
from nepi_dist.engine.heartbeat import live_queues
from nepi_dist.engine.routing import (
    DEFAULT_WORKER_WAIT,
    NODE_RTYPE,
    POOL_QUEUE,
    WORKER_WAIT,
    host_node,
    host_queue,
    queue_for,
)
from nepi_dist.engine.scheduler import LocalScheduler, RemoteTask, Task
from nepi_dist.engine.signing import signing_key
from nepi_dist.engine.store import FailureLevel, Store
from nepi_dist.errors import (
    ActionError,
    ArgumentTypeError,
    ArgumentValueError,
    DuplicateGuidError,
    ECFailureError,
    GuidRangeError,
    ReadOnlyAttributeError,
    WaitTimeoutError,
    shown,
)
from nepi_dist.experiment.describe import describe, dump, save_description
from nepi_dist.experiment.file import Experiment, read_experiment
from nepi_dist.model.attribute import Flags
from nepi_dist.model.resource import ResourceFactory, ResourceRegistry, check_name
from nepi_dist.model.state import ResourceAction, ResourceState, state_from
from nepi_dist.model.timefuncs import due_in, format_date, timeout_seconds

RETENTION_ENV = "NEPI_DIST_RETENTION"
#: Seconds a released run's keys are kept (7 days).
DEFAULT_RETENTION = 7 * 24 * 3600.0


class ECState:
    """State of the controller (NEPI's values)."""

    RUNNING = 1
    FAILED = 2
    TERMINATED = 3


#: What the REGISTER script returns when the run's next automatic guid would reach 2**53.
REGISTER_EXHAUSTED = -2


def _check_group(group: Any) -> int:
    """Return a deployment group id (an int in [1, 2**53), as its key and Lua need), or raise."""
    if not isinstance(group, int) or isinstance(group, bool):
        raise ArgumentTypeError(f"a deployment group is an int, not {shown(group)}")
    if not 1 <= group < MAX_GUID:
        raise ArgumentValueError(f"a deployment group is an int in [1, 2**53), not {shown(group)}")
    return int(group)


def _check_arguments(
    exp_id: Any, run_id: Any, redis_url: Any, registry: Any, local_worker: Any, nthreads: Any, celery_settings: Any,
    local_dir: Any = None, persist: Any = False,
) -> None:
    """Refuse a controller's arguments of the wrong type before anything starts."""
    if local_dir is not None and not isinstance(local_dir, (str, os.PathLike)):
        raise ArgumentTypeError(f"local_dir is a path or None, not {shown(local_dir)}")
    if not isinstance(persist, bool):
        raise ArgumentTypeError(f"persist is a bool, not {shown(persist)}")
    for name, value in (("exp_id", exp_id), ("run_id", run_id), ("redis_url", redis_url)):
        if value is not None and not isinstance(value, str):
            raise ArgumentTypeError(f"{name} is a str or None, not {shown(value)}")
    if registry is not None and not isinstance(registry, ResourceRegistry):
        raise ArgumentTypeError(f"registry is a ResourceRegistry or None, not {shown(registry)}")
    if local_worker is not None and not isinstance(local_worker, bool):
        raise ArgumentTypeError(f"local_worker is a bool or None, not {shown(local_worker)}")
    if nthreads is not None:
        if not isinstance(nthreads, int) or isinstance(nthreads, bool):
            raise ArgumentTypeError(f"nthreads is an int or None, not {shown(nthreads)}")
        if nthreads < 1:
            raise ArgumentValueError(f"nthreads is >= 1, not {nthreads}")
    if celery_settings is not None and (
        not isinstance(celery_settings, Mapping) or not all(isinstance(k, str) for k in celery_settings)
    ):
        raise ArgumentTypeError(f"celery_settings is a dict of str keys or None, not {shown(celery_settings)}")


def _threads_and_retention(nthreads: int | None) -> tuple[int, float]:
    """Return the controller's threads (``nthreads``, else ``$NEPI_NTHREADS``, else 50) and the
    retention of its released run (``$NEPI_DIST_RETENTION``), refusing a malformed setting."""
    raw = os.environ.get(RETENTION_ENV, "")
    try:
        threads = nthreads or default_threads()
    except ValueError as exc:
        raise ArgumentValueError(str(exc)) from None
    try:
        retention = float(raw) if raw else DEFAULT_RETENTION
    except ValueError:
        retention = -1.0
    if not retention > 0:
        raise ArgumentValueError(f"{RETENTION_ENV}={raw!r} must be a positive number of seconds")
    return threads, retention


def _local_dir(store: Store, given: str | os.PathLike[str] | None) -> str:
    """Return the run's local_dir, kept in its hash: the one given, else the one the run has, else the default."""
    if given is not None:
        return store.set_run_field("ldir", os.path.abspath(os.path.expanduser(os.fspath(given))))
    return store.set_run_field("ldir", default_local_dir(), only_new=True)


def _globals_of(store: Store) -> dict[str, dict[str, str]]:
    """The run's global attribute values (JSON text), by rtype then name."""
    found: dict[str, dict[str, str]] = {}
    for field, raw in store.run_fields().items():
        if field.startswith("g:"):
            rtype, _, name = field[2:].rpartition(":")
            found.setdefault(rtype, {})[name] = raw
    return found


class ExperimentController(RunContext):
    """Describe, deploy, watch and release one run of an experiment.

    :param exp_id: names the scenario (random when not given).
    :param run_id: names this run (a timestamp when not given); give an
        existing one to re-attach to a run.
    :param redis_url: the Redis used as broker and store; default
        ``$NEPI_DIST_REDIS_URL``, else the embedded default.
    :param local_worker: run an in-process worker (default: only when embedded).
    :param nthreads: threads of the in-process worker and of the local scheduler
        (default ``$NEPI_NTHREADS``, else 50).
    :param celery_settings: Celery settings (and ``visibility_timeout``,
        ``eta_horizon``) for the controller's app; any other keyword of the
        controller is refused with ``TypeError``.
    :param local_dir: the root of the experiment's local files (NEPI 3.1's):
        ``exp_dir`` is ``<local_dir>/<exp_id>``, ``run_dir`` is
        ``<exp_dir>/<run_id>``, where a Collector writes its traces.  Default
        ``$NEPI_DIST_RESULTS_DIR``, else the system's temporary folder (NEPI's).
    :param persist: save the description (:meth:`save`) into ``run_dir`` when
        the whole run is released, as NEPI does.
    """

    def __init__(
        self,
        exp_id: str | None = None,
        run_id: str | None = None,
        redis_url: str | None = None,
        registry: ResourceRegistry | None = None,
        local_worker: bool | None = None,
        nthreads: int | None = None,
        celery_settings: Mapping[str, Any] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        persist: bool = False,
    ) -> None:
        _check_arguments(exp_id, run_id, redis_url, registry, local_worker, nthreads, celery_settings,
                         local_dir, persist)
        threads, retention = _threads_and_retention(nthreads)  # before anything starts
        signing_key()  # a key too short is refused before anything starts, too
        exp_id = exp_id or f"exp-{os.urandom(8).hex()}"
        run_id = run_id or format_date(time.time())
        url = redis_url or os.environ.get(REDIS_URL_ENV)
        self._redis: EmbeddedRedis | None = None
        self._worker: EmbeddedWorker | None = None
        self._fm: FailureManager | None = None
        #: Credential values a shutdown took out of the store, for new_run (never written anywhere).
        self._kept_credentials: dict[int, dict[str, str]] = {}
        self._state = ECState.RUNNING
        if not url:
            self._redis = EmbeddedRedis().start()
            url = self._redis.url
        try:
            client = redis_client(url)
            check_no_eviction(client)
            warning = None if self._redis is not None else durability_warning(client)
            if warning:
                logging.getLogger("ExperimentController").warning("%s", warning)
            store = Store(client, exp_id, run_id)
            try:
                app = create_app(url, **dict(celery_settings or {}))
            except (TypeError, ValueError) as exc:  # settings() converts and compares the values it reads
                raise ArgumentValueError(f"bad celery_settings: {exc}") from None
            reg = registry or ResourceFactory
            app.nepi_registry = reg
            super().__init__(store, app, reg, logging.getLogger("ExperimentController"))
            client.hsetnx(store.keys.run, "fl", FailureLevel.OK)
            self._local_dir = _local_dir(store, local_dir)
            self._persist = persist
            self._globals = _globals_of(store)
            self._settings: dict[str, Any] = {
                "redis_url": redis_url, "registry": registry, "local_worker": local_worker, "nthreads": nthreads,
                "celery_settings": celery_settings, "local_dir": self._local_dir, "persist": persist}
            self._threads = threads
            store.enlist()
            self._retention = retention
            self._tasks: dict[Any, Task | RemoteTask] = {}
            self._local = LocalScheduler(threads, self._logger)
            if local_worker if local_worker is not None else self._redis is not None:
                self._worker = EmbeddedWorker(app, threads).start()
            self._fm = FailureManager(self).start()
        except BaseException:
            self._stop_machinery()
            raise
        ending.opened(self)  # released at exit if embedded and never shut down (engine/ending.py)

    # -- state ---------------------------------------------------------------------

    @property
    def ecstate(self) -> int:
        return self._state

    @property
    def abort(self) -> bool:
        return self._state == ECState.FAILED or super().abort

    @property
    def redis_url(self) -> str:
        return str(self._app.conf.nepi_redis_url)

    @property
    def embedded(self) -> bool:
        """True when this controller runs its own private Redis (the run ends with this process)."""
        return self._redis is not None

    @property
    def local_dir(self) -> str:
        return self._local_dir

    @property
    def persist(self) -> bool:
        """True when the description is saved into ``run_dir`` at release (NEPI's)."""
        return self._persist

    @property
    def nthreads(self) -> int:
        """Threads of the controller's scheduler (and of its in-process worker)."""
        return self._threads

    def _writable(self) -> None:
        self._store._writable()

    def set_ec_failure(self, why: str) -> None:
        """Record an EC-internal error: failure level EC_FAILURE, state FAILED."""
        if not isinstance(why, str):
            raise ArgumentTypeError(f"why is a str, not {shown(why)}")
        self._logger.error("EC failure: %s", why)
        self._state = ECState.FAILED
        self._store.set_failure_level(FailureLevel.EC_FAILURE)

    # -- describe ------------------------------------------------------------------

    def register_resource(self, rtype: str, guid: int | None = None) -> int:
        """Register an RM of type ``rtype``; return its guid (an int in [1, 2**53))."""
        self._writable()
        rtype = self._registry.canonical(check_name(rtype, "resource type"))
        if guid is not None:
            guid = check_guid(guid)
        new = self._store.register(rtype, guid)
        if new == REGISTER_EXHAUSTED:
            raise GuidRangeError(f"no automatic guid left below 2**53 ({MAX_GUID}): give one explicitly")
        if new < 0:
            raise DuplicateGuidError(f"guid {guid} is already registered")
        self._rtypes[new] = rtype
        if self._globals.get(rtype):
            self._store.set_fields(new, {f"a:{name}": raw for name, raw in self._globals[rtype].items()})
        return new

    def set_global(self, rtype: str, name: str, value: Any) -> Any:
        """Set the run's global value of attribute ``name`` for type ``rtype`` (NEPI 3.1's):
        every RM of that type registered from now on starts with it; return the value stored."""
        self._writable()
        rclass = self._registry.get_resource_type(check_name(rtype, "resource type"))
        attr = rclass.get_attribute(name)
        if attr.has_flag(Flags.ReadOnly):
            raise ReadOnlyAttributeError(f"attribute {name!r} of {rclass.rtype()} is read-only")
        value = attr.validate(value)
        raw = json.dumps(value)
        self._store.set_run_field(f"g:{rclass.rtype()}:{name}", raw)
        self._globals.setdefault(rclass.rtype(), {})[name] = raw
        return value

    # -- the description as a file -------------------------------------------------

    def serialize(self, format: str = "yaml") -> str:
        """Return the description as an experiment file's text (``yaml`` or ``json``)."""
        return dump(describe(self), format)

    def save(self, dirpath: str | os.PathLike[str] | None = None, format: str = "yaml") -> str:
        """Write the description (types, attributes set, traces, connections, conditions,
        globals) as an experiment file; return its path.

        ``dirpath`` ending in ``.yaml``, ``.yml`` or ``.json`` is the file itself
        (its suffix chooses the format); else it is a folder (default ``run_dir``)
        that gets ``<exp_id>.<format>``.
        """
        return save_description(self, dirpath, format)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], params: Mapping[str, Any] | None = None, format: str | None = None,
        **kwargs: Any,
    ) -> ExperimentController:
        """Return a new controller (``kwargs`` as the constructor's; ``exp_id`` defaults to the
        file's) with the experiment file at ``path`` registered into it, built with ``params``.
        ``format`` (NEPI's argument) is not needed: the file's suffix tells.

        A bad file raises :class:`~nepi_dist.errors.ExperimentFileError` naming
        the field and why, and no controller is left running.
        """
        experiment = read_experiment(path)
        kwargs.setdefault("exp_id", experiment.exp_id)
        ec = cls(**kwargs)
        try:
            experiment.build(ec, params)
        except BaseException:
            ec.shutdown()
            raise
        return ec

    def new_run(self, **kwargs: Any) -> ExperimentController:
        """Return a controller for a new run of this experiment: the same exp_id and settings
        (``kwargs`` override them), a fresh run_id, this run's description registered (same guids)."""
        settings = {**self._settings, "exp_id": self.exp_id, **kwargs}
        ec = type(self)(**settings)
        try:
            Experiment.from_document(describe(self, credentials=True, kept=self._kept_credentials)).build(ec)
        except BaseException:
            ec.shutdown()
            raise
        return ec

    def set_with_conditions(
        self, name: str, value: Any, guids1: Any, guids2: Any, state: Any, time: Any = None
    ) -> None:
        """Set ``name`` to ``value`` on every RM of guids1 once ``time`` has elapsed
        since every RM of guids2 reached ``state`` (and the RM is STARTED)."""
        self._writable()
        check_name(name, "attribute")  # checked even when guids1 is empty
        _, grp, st = self._validate_condition(ResourceAction.START, guids2, state, time)
        targets = self._check_guids(guids1)
        for g in targets:
            rm = self.get_resource(g)
            attr = rm.get_attribute(name)
            if attr.has_flag(Flags.ReadOnly) or attr.has_flag(Flags.ExecReadOnly):
                raise ReadOnlyAttributeError(f"attribute {name!r} of {rm.rtype()} cannot be set at run time")
            attr.validate(value)
        self._send([(g, "set_with_conditions", [name, value, grp, int(st), time], {}) for g in targets])

    # -- act -----------------------------------------------------------------------

    def _act(self, guid: int, method: str) -> str:
        self._writable()
        self._check_guids([guid])
        return self._send([(guid, method, [], {})])[0]

    def discover(self, guid: int) -> str:
        return self._act(guid, "discover")

    def provision(self, guid: int) -> str:
        return self._act(guid, "provision")

    def start(self, guid: int) -> str:
        return self._act(guid, "start")

    def stop(self, guid: int) -> str:
        return self._act(guid, "stop")

    def deploy(
        self, guids: int | Iterable[int] | None = None, wait_all_ready: bool = True, group: int | None = None
    ) -> int:
        """Deploy RMs (default: every NEW one) as one deployment group; return the group id.

        With ``wait_all_ready`` no RM of the group starts before all of it is READY.
        """
        self._writable()
        if not isinstance(wait_all_ready, bool):
            raise ArgumentTypeError(f"wait_all_ready is a bool, not {shown(wait_all_ready)}")
        if group is not None:
            group = _check_group(group)
        # Checked and de-duplicated (a guid counted twice would hold its group back forever).
        guids = [] if guids is None else self._check_guids(guids)
        if not guids:
            every = self._store.guids()
            guids = [g for g, s in zip(every, self._store.states(every), strict=True) if s == ResourceState.NEW]
        gid = group if group is not None else self._store.next_id("groups")
        conds = self._store.field_of_many(guids, "cond")
        stop = str(int(ResourceAction.STOP))
        stop_guids = [g for g, c in zip(guids, conds, strict=True) if c and json.loads(c).get(stop)]
        start_now = self._store.join_group(gid, guids, wait_all_ready)
        calls: list[tuple[int, str, list[Any], dict[str, Any]]]
        calls = [(g, "deploy_with_conditions", [], {}) for g in guids]
        starts = guids if not wait_all_ready else start_now
        calls += [(g, "start_with_conditions", [], {}) for g in starts]
        calls += [(g, "stop_with_conditions", [], {}) for g in stop_guids]
        self._send(calls)
        self._expect_workers(guids)
        return gid

    def _unserved(self, guids: list[int]) -> list[int]:
        """Return the guids whose queue no live worker serves (one SCAN of heartbeats)."""
        if not guids:
            return []
        live = live_queues(self._store.client)
        if self._worker is not None:
            live.add(POOL_QUEUE)
        return [g for g in guids if queue_for(self, g) not in live]

    def _expect_workers(self, guids: list[int]) -> None:
        """Fail the RMs of a queue no live worker serves, once its wait is over.

        One look at the heartbeats now (one SCAN for the whole deploy) and one
        at the deadline, on the controller's timer: nothing polls.  A host
        queue waits its node's ``workerWait``; the pool queue, unless this
        controller runs its own worker, waits the default.
        """
        by_queue: dict[str, list[int]] = {}
        for g in self._unserved(guids):
            by_queue.setdefault(queue_for(self, g), []).append(g)
        for queue, members in by_queue.items():
            wait = DEFAULT_WORKER_WAIT
            nodes = [g for g in members if self._rtype(g) == NODE_RTYPE]
            found = host_node(self, members[0]) if not nodes else None
            nodes += [found[0]] if found else []
            if nodes:
                wait = max(float(self.get(n, WORKER_WAIT)) for n in nodes)
            self._logger.warning("no live worker serves %s yet: its RMs fail if none comes within %gs",
                                 queue, wait)
            self._local.schedule(wait, functools.partial(self._fail_unserved, queue, members, wait))

    def _fail_unserved(self, queue: str, guids: list[int], waited: float) -> None:
        """Fail the RMs of ``guids`` not yet READY when still no live worker serves ``queue``."""
        if self._store.frozen or queue in live_queues(self._store.client):
            return
        states = self._store.states(guids)
        left = [g for g, s in zip(guids, states, strict=True) if s is not None and s < ResourceState.READY]
        hint = "nepi-dist worker" if queue == POOL_QUEUE else \
            f"nepi-dist worker --host {queue.removeprefix(host_queue(''))}"
        message = f"no live worker served queue {queue} within {waited:g}s: start `{hint}`"
        # Nodes last: a critical node's failure aborts the run, and by then every RM is marked.
        for g in sorted(left, key=lambda g: self._rtype(g) == NODE_RTYPE):
            self._store.set_fields(g, {"err": message})
            self._transition(g, ResourceState.FAILED)
        if left:
            self._logger.error("%s; failed guids %s", message, left)

    def release(self, guids: int | Iterable[int] | None = None, timeout: float = 120.0) -> None:
        """Drop pending work and release RMs (default: all); every one ends RELEASED."""
        self._writable()
        timeout_seconds(timeout)  # refused before anything is released
        everything = guids is None
        guids = self._store.guids() if guids is None else self._check_guids(guids)
        if everything:
            self._store.mark_dropping()
            self._local.drop_pending()
            self._drop_pending()
        unserved = self._unserved(guids)
        if unserved:
            self._logger.warning("no live worker serves %s: marking them RELEASED", unserved)
            self._force_released(unserved)
            guids = [g for g in guids if g not in set(unserved)]
        self._send([(g, "release", [], {}) for g in guids])
        try:
            self.wait_released(guids, timeout=timeout)
        except WaitTimeoutError:
            left = [g for g, s in zip(guids, self._store.states(guids), strict=True) if s != ResourceState.RELEASED]
            self._logger.warning("no worker released %s in %ss: marking them RELEASED", left, timeout)
            self._force_released(left)
        if everything:
            if self._persist:
                try:
                    self.save()
                except OSError as exc:  # the run is released all the same; its folder could not be written
                    self._logger.error("persist: could not save the description into %s: %s", self.run_dir, exc)
            self._store.retire(self._retention)

    def _force_released(self, guids: Iterable[int]) -> None:
        """Mark RMs RELEASED regardless of the action that should have done it (and wake what waits on it)."""
        for g in guids:
            self._transition(g, ResourceState.RELEASED)

    def shutdown(self) -> None:
        """Release every RM, keep a read-only snapshot, stop the controller's machinery."""
        if self._store.frozen:
            return
        if self._state == ECState.FAILED:
            self._stop_machinery()
            raise ECFailureError("EC failure. Can not exit gracefully")
        try:
            self.release()
        finally:
            try:
                snapshot = self._store.snapshot()
                self._scrub_credentials(snapshot)
                self._store.freeze(snapshot)
            finally:
                self._state = ECState.TERMINATED
                self._stop_machinery()

    def _scrub_credentials(self, snapshot: dict[str, Any]) -> None:
        """Drop the values of Credential attributes from ``snapshot`` and from the run's keys in Redis.

        The run is released: no action needs them any more, and the run's keys
        stay in Redis for the retention time (``$NEPI_DIST_RETENTION``).  This
        process keeps them in memory only, for :meth:`new_run`.
        """
        pipe = self._store.client.pipeline(transaction=False)
        for guid, fields in snapshot["rms"].items():
            try:
                rclass = self._registry.get_resource_type(str(fields.get("rtype")))
            except KeyError:
                continue
            names = [f"a:{a.name}" for a in rclass.get_attributes() if a.is_credential and f"a:{a.name}" in fields]
            for name in names:
                self._kept_credentials.setdefault(int(guid), {})[name] = fields.pop(name)
            if names:
                pipe.hdel(self._store.keys.rm(guid), *names)
        pipe.execute()

    def _stop_machinery(self) -> None:
        ending.closed(self)
        local = getattr(self, "_local", None)
        if local is not None:
            local.stop()
        if self._fm is not None:
            self._fm.stop()
            self._fm = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self._close_app()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def _close_app(self) -> None:
        """Let go of the Celery app's broker connections (a process running many runs keeps no socket of a past one)."""
        app = getattr(self, "_app", None)
        if app is None:
            return
        try:
            if self._redis is not None:  # an embedded broker: its pools would outlive it in kombu's
                app.close_broker_pools()
            else:
                app.close()
        except Exception as exc:  # the teardown boundary: the run is over whatever the broker says
            self._logger.warning("closing the broker connections: %s", exc)

    def __enter__(self) -> ExperimentController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- schedule ------------------------------------------------------------------

    def schedule(self, date: Any, callback: Callable[..., Any], track: bool = False) -> Any:
        """Run ``callback`` at ``date``; return the task id.

        An RM method (possibly in a ``functools.partial``) becomes a Celery
        task; any other callable runs in this process, as in NEPI.
        """
        self._writable()
        delay = due_in(date)
        if not callable(callback):
            raise ActionError(f"a scheduled callback is callable, not {shown(callback)}")
        if not isinstance(track, bool):
            raise ArgumentTypeError(f"track is a bool, not {shown(track)}")
        action = as_action(callback)
        if action is None:
            task: Task | RemoteTask = self._local.schedule(delay, callback)
            tid: Any = task.id
        else:
            self._check_guids([action[0]])  # an RM handle made for a guid this run lacks
            tid = self._send([action], delay, track)[0]
            task = RemoteTask(self._store, tid)
        if track:
            self._tasks[tid] = task
        return tid

    def get_task(self, tid: Any) -> Task | RemoteTask | None:
        """Return the tracked task ``tid`` (an id ``schedule`` returned), or None."""
        if not isinstance(tid, (int, str)) or isinstance(tid, bool):
            raise ArgumentTypeError(f"a task id is an int or a str, not {shown(tid)}")
        return self._tasks.get(tid)

    # -- wait ----------------------------------------------------------------------

    def wait_finished(self, guids: Any, timeout: float | None = None) -> None:
        """Block until every RM is >= STOPPED, or the run aborts."""
        self.wait(guids, ResourceState.STOPPED, lambda: self.abort, timeout)

    def wait_started(self, guids: Any, timeout: float | None = None) -> None:
        self.wait(guids, ResourceState.STARTED, lambda: self.abort, timeout)

    def wait_deployed(self, guids: Any, timeout: float | None = None) -> None:
        self.wait(guids, ResourceState.READY, lambda: self.abort, timeout)

    def wait_released(self, guids: Any, timeout: float | None = None) -> None:
        self.wait(guids, ResourceState.RELEASED, lambda: self._state == ECState.FAILED, timeout)

    def wait(
        self,
        guids: Any,
        state: int,
        quit: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Block until every RM of ``guids`` reached ``state`` or ``quit()`` is true.

        Blocks on the run's event stream (no polling of the RMs); raises
        :class:`WaitTimeoutError` when ``timeout`` seconds pass first.
        """
        try:
            state = state_from(state)
        except (KeyError, ValueError):
            raise ArgumentValueError(f"unknown state {shown(state)}") from None
        if quit is not None and not callable(quit):
            raise ArgumentTypeError(f"quit is callable or None, not {shown(quit)}")
        timeout = timeout_seconds(timeout)
        remaining = set(self._check_guids(guids))
        store = self._store
        if store.frozen:
            return
        last = store.last_event_id()
        for g, s in zip(list(remaining), store.states(list(remaining)), strict=True):
            if s is not None and s >= state:
                remaining.discard(g)
        deadline = None if timeout is None else time.monotonic() + timeout
        while remaining:
            if quit is not None and quit():
                return
            block = 1000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(
                        f"{len(remaining)} resources not >= {ResourceState(state).name} "
                        f"after {timeout}s: {sorted(remaining)[:10]}"
                    )
                block = max(1, min(block, int(left * 1000)))
            for eid, fields in store.events(last, block):
                last = eid
                g = int(fields["g"])
                if g in remaining and int(fields["s"]) >= state:
                    remaining.discard(g)


def _typed_redis_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``func`` so that a redis-py error reaches the user as a nepi_dist error."""

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise typed_error(exc) from exc

    return wrapped


def _type_redis_errors_of(cls: type) -> None:
    """Give every public method and property of ``cls`` (inherited ones too) typed Redis errors.

    The user's API is the boundary: below it, redis-py errors carry their
    detail (the workers' task boundary treats them as an outage to resume
    from); above it, nothing but nepi_dist's own errors.
    """
    for name in dir(cls):
        if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__"):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, property) and member.fget is not None:
            setattr(cls, name, property(_typed_redis_errors(member.fget), member.fset, member.fdel, member.__doc__))
        elif inspect.isfunction(member):
            setattr(cls, name, _typed_redis_errors(member))


_type_redis_errors_of(ExperimentController)
