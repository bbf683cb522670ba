"""The Celery task that runs RM actions, and the per-process worker runtime.

A message carries ``(exp_id, run_id, action id, payload)`` where the payload
names a guid, an RM method and JSON arguments.  The worker claims the action
(one Lua step that also refuses when the run is aborted), loads the RM from
the store through the registry of known types, runs the method, and marks
the action finished.  A second delivery of the same action id does nothing.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from celery.exceptions import Reject

from nepi_dist.engine import signing
from nepi_dist.engine.batch import BATCH_TASK, BUFFER_SPREAD, SendBuffer, run_in_buffer
from nepi_dist.engine.connection import check_no_eviction, redis_client
from nepi_dist.engine.context import ACTION_TASK, READ_METHODS, READ_TASK, RELEASE_METHODS, RunContext, resolve_action
from nepi_dist.engine.heartbeat import HEARTBEAT_EVERY, HEARTBEAT_TTL, beat, clear_dead_in_my_space
from nepi_dist.engine.keeper import Keeper
from nepi_dist.engine.keys import RUNS_KEY, parse_run_member, worker_key
from nepi_dist.engine.routing import POOL_QUEUE, this_worker_host
from nepi_dist.engine.store import Store
from nepi_dist.errors import ActionError, ActionFailedError, UnknownResourceTypeError
from nepi_dist.model import secrets
from nepi_dist.model.resource import ResourceFactory, ResourceRegistry

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("nepi_dist.engine.startup")

T = TypeVar("T")

#: Batch threads of a worker process whose Celery concurrency is unknown.
BATCH_THREADS = 16
#: The queues a worker process consumes (set by ``nepi-dist worker``), for its heartbeat.
QUEUES_ENV = "NEPI_DIST_WORKER_QUEUES"


class WorkerRuntime:
    """What one worker process keeps between tasks: no RM state, only handles.

    A Redis client, the registry of RM types, a worker id with a heartbeat
    key in Redis (a claim held by a worker whose heartbeat expired may be
    taken over), a small cache of run contexts, the action ids this process
    runs right now, and the claims it gave up after a Redis error (released
    by the heartbeat thread once Redis answers again).
    """

    def __init__(self, app: Celery, registry: ResourceRegistry) -> None:
        self.app = app
        self.registry = registry
        self.client = redis_client(app.conf.nepi_redis_url)
        check_no_eviction(self.client)
        self.worker_id = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(3).hex()}"
        self._contexts: dict[tuple[str, str], RunContext] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._batch_pool: ThreadPoolExecutor | None = None
        self._running: set[tuple[str, str]] = set()  # (run key prefix, action id)
        self._abandoned: list[tuple[Store, str, str]] = []
        self.queues = [q for q in os.environ.get(QUEUES_ENV, POOL_QUEUE).split(",") if q]
        self._beat()
        cleared = clear_dead_in_my_space(self.client, self.worker_id)
        if cleared:
            log.warning("cleared the heartbeats of dead workers %s", ", ".join(cleared))
        self._thread = threading.Thread(target=self._heartbeat, name="nepi-heartbeat", daemon=True)
        self._thread.start()
        self._keeper = Keeper(self).start()

    def _beat(self) -> None:
        beat(self.client, self.worker_id,
             {"machine": socket.gethostname(), "host": this_worker_host(), "queues": self.queues,
              "name": getattr(self.app, "nepi_worker_name", None)})  # Celery's name@host

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                self._beat()
                self._give_up_abandoned()
                self._give_up_orphans()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- the actions this process runs ---------------------------------------------

    def begin(self, store: Store, aid: str) -> bool:
        """Note that this process starts running ``aid`` of ``store``'s run; False when it runs it already."""
        with self._lock:
            if (store.keys.prefix, aid) in self._running:
                return False
            self._running.add((store.keys.prefix, aid))
            return True

    def end(self, store: Store, aid: str) -> None:
        with self._lock:
            self._running.discard((store.keys.prefix, aid))

    def abandon(self, store: Store, aid: str, token: str) -> None:
        """Remember a claim whose action a Redis error cut short, to give it up when Redis answers."""
        with self._lock:
            self._abandoned.append((store, aid, token))

    def _give_up_abandoned(self) -> None:
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        by_store: dict[int, tuple[Store, list[tuple[str, str]]]] = {}
        for store, aid, token in abandoned:
            by_store.setdefault(id(store), (store, []))[1].append((aid, token))
        for store, claims in by_store.values():
            try:
                given = store.unclaim(claims)
            except redis.RedisError:
                with self._lock:
                    self._abandoned.extend((store, aid, token) for aid, token in claims)
                raise
            log.warning("gave up %d claims that a Redis error cut short: they will be resumed", given)

    def _give_up_orphans(self) -> int:
        """Give up every claim of this worker whose action it no longer runs; return how many.

        Such a claim is left when Redis lost the write that ended it (a crash
        of its host under ``appendfsync everysec``, a failover to a replica
        behind): its holder is alive, so no other worker takes it over, and
        the holder never looks at it again.  Given up, the next delivery of
        the action takes it over and resumes it.  Safe against a race: an
        action runs here from before its claim is written until after its
        finish, and a claim is given up only under its own token (a claim
        taken again since has another).
        """
        given = 0
        for member in self.client.zrange(RUNS_KEY, 0, -1):
            ids = parse_run_member(member)
            if ids is None:
                continue
            store = self.context(*ids).store
            claims = store.claims_of(self.worker_id)  # read before the snapshot of what runs here
            if not claims:
                continue
            with self._lock:
                orphans = [(aid, token) for aid, token in claims if (store.keys.prefix, aid) not in self._running]
            if orphans:
                n = store.unclaim(orphans)
                given += n
                log.warning("run %s/%s: gave up %d claims of this worker that no action here runs (Redis lost "
                            "their end): they will be resumed", store.exp_id, store.run_id, n)
        return given

    @property
    def batch_pool(self) -> ThreadPoolExecutor:
        """The threads that run the actions of batch messages (as many as the worker's own)."""
        with self._lock:
            if self._batch_pool is None:
                threads = int(self.app.conf.get("worker_concurrency") or 0) or BATCH_THREADS
                self._batch_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nepi-batch")
            return self._batch_pool

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when this runtime stops (e.g. to stop a watcher thread)."""
        self._on_stop.append(callback)

    def stop(self) -> None:
        self._stop.set()
        self._keeper.stop()
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=False, cancel_futures=True)
        for callback in self._on_stop:
            callback()
        with contextlib.suppress(redis.RedisError):
            # A tombstone: whatever this process still held is taken over at once.
            self.client.set(worker_key(self.worker_id), json.dumps({"dead": True}), ex=HEARTBEAT_TTL)

    def context(self, exp_id: str, run_id: str) -> RunContext:
        key = (exp_id, run_id)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                if len(self._contexts) > 64:
                    self._contexts.clear()
                ctx = RunContext(Store(self.client, exp_id, run_id), self.app, self.registry, log)
                self._contexts[key] = ctx
        return ctx


def runtime_of(app: Celery) -> WorkerRuntime:
    """Return the app's worker runtime, creating it on first use."""
    rt: WorkerRuntime | None = getattr(app, "_nepi_runtime", None)
    if rt is None:
        with _RUNTIME_LOCK:
            rt = getattr(app, "_nepi_runtime", None)
            if rt is None:
                registry = getattr(app, "nepi_registry", None) or ResourceFactory
                rt = WorkerRuntime(app, registry)
                app._nepi_runtime = rt
    return rt


_RUNTIME_LOCK = threading.Lock()


class Verdict(str):
    """What happened to an action (for logs and tests), with why when its RM method failed."""

    reason: str | None = None


def _verdict(text: str, reason: str | None = None) -> Verdict:
    verdict = Verdict(text)
    verdict.reason = reason
    return verdict


def failed_reasons(verdicts: list[Any]) -> list[str]:
    """Return the reasons of the failed actions among ``verdicts``."""
    return [v.reason or "failed" for v in verdicts if v in ("error", "resumed:error")]


def run_action(app: Celery, exp_id: str, run_id: str, aid: str, payload: dict[str, Any]) -> str:
    """Claim and run one RM action; return what happened (for logs and tests).

    A Redis error that outlasts the outage bound cuts the action short: its
    message is rejected back to the queue (not acknowledged as done), this
    process gives its claim up once Redis answers, and the next delivery
    resumes the action (see :meth:`Store.claim`).
    """
    rt = runtime_of(app)
    ctx = rt.context(exp_id, run_id)
    if not rt.begin(ctx.store, aid):
        log.debug("action %s is running in this process already", aid)
        return "skip:running"
    token = f"{rt.worker_id}/{os.urandom(4).hex()}"
    try:
        return _claim_and_run(ctx, aid, token, payload)
    except redis.RedisError as exc:
        rt.abandon(ctx.store, aid, token)
        log.error("action %s %s on guid %s cut short by Redis (%s): it will run again",
                  aid, payload.get("m"), payload.get("g"), exc)
        raise Reject(exc, requeue=True) from exc
    finally:
        rt.end(ctx.store, aid)


def _claim_and_run(ctx: RunContext, aid: str, token: str, payload: dict[str, Any]) -> str:
    method = str(payload["m"])
    suspect = payload.get("x")
    verdict = ctx.store.claim(aid, token, method in RELEASE_METHODS, suspect if isinstance(suspect, str) else None)
    if verdict.startswith(("wait:", "suspect:")):
        kind, _, holder = verdict.partition(":")
        again = dict(payload)
        if kind == "wait":
            # Held by a worker that may be dead: look again once its heartbeat would have expired.
            later = ctx.store.heartbeat_left(holder) + 0.5
            again.pop("x", None)
        else:
            # The holder's heartbeat is gone: make sure it stays gone for a whole heartbeat period.
            later = HEARTBEAT_EVERY + 1.0
            again["x"] = holder
        ctx._dispatch([(aid, again, ctx.store.now() + later)], from_outbox=False)
        log.info("action %s %s on guid %s held by %s: looking again in %.1fs",
                 aid, method, payload.get("g"), holder, later)
        return verdict
    if verdict not in ("run", "resume"):
        log.debug("action %s %s on guid %s: %s", aid, method, payload.get("g"), verdict)
        return verdict
    tracked = bool(payload.get("t"))
    status, result, reason = "DONE", None, None
    try:
        rm = ctx.get_resource(int(payload["g"]))
        rm._resumed = verdict == "resume"
        value = resolve_action(rm, method)(*payload.get("a", []), **payload.get("k", {}))
        result = value if _jsonable(value) else repr(value)
    except redis.RedisError:
        raise  # not the action's failure: it runs again
    except Exception as exc:
        status, result = "ERROR", secrets.redact(traceback.format_exc())
        reason = secrets.redact(f"{method} guid={payload.get('g')}: {type(exc).__name__}: {exc}")
        # An RM method's failure was logged by its failtrap (and by the controller): once is enough.
        log.log(logging.INFO if getattr(exc, "_nepi_trapped", False) else logging.WARNING,
                "action %s %s on guid %s failed: %s", aid, method, payload.get("g"), exc)
        if _is_setup_error(exc):
            _fail_resource(ctx, int(payload["g"]), f"{type(exc).__name__}: {exc}",
                           released=method in RELEASE_METHODS)
    ctx.store.finish(aid, token, tracked, status, result)
    return _verdict(status.lower() if verdict == "run" else f"resumed:{status.lower()}", reason)


def run_batch(app: Celery, exp_id: str, run_id: str, items: list[Any]) -> dict[str, int]:
    """Run the actions of a batch message concurrently; return how many ended how.

    Each action keeps its own claim, so a batch delivered again (its worker
    died) runs only what is not done yet.  The items run on the runtime's
    batch threads while this thread publishes what they send (see
    :mod:`nepi_dist.engine.batch`) and waits for them (local futures, not Celery
    results): the message is acknowledged only once every action is done.
    """
    rt = runtime_of(app)
    ctx = rt.context(exp_id, run_id)
    valid = []
    for item in items:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            valid.append(item)
        else:
            log.error("batch item refused (not [action id, payload]): %.200r", item)
    buffer = SendBuffer(ctx, len(valid))
    futures = [
        rt.batch_pool.submit(run_in_buffer, buffer, functools.partial(run_action, app, exp_id, run_id, aid, payload))
        for aid, payload in valid
    ]
    for future in futures:  # a cancelled item (the worker is stopping) never ran to say it is done
        future.add_done_callback(lambda f: buffer.item_done() if f.cancelled() else None)
    for sends in buffer.drain():
        try:
            ctx._dispatch(sends, from_outbox=True, spread=BUFFER_SPREAD)
        except Exception as exc:  # the task boundary: the outbox keeps them for the failure manager
            log.error("publishing %d actions of a batch failed (left in the outbox): %s", len(sends), exc)
    counts: dict[str, int] = {}
    cut_short: Reject | None = None
    reasons: list[str] = []
    for future in futures:
        try:
            verdict = future.result()
            reasons += failed_reasons([verdict])
        except Reject as exc:
            cut_short, verdict = exc, "cut-short"
        except Exception as exc:  # the task boundary: one action's crash does not drop the others
            log.error("batch action crashed: %s", exc)
            verdict = "crash"
        counts[verdict] = counts.get(verdict, 0) + 1
    if cut_short is not None:  # back to the queue: the actions done are skipped, the others resumed
        raise cut_short
    if reasons:  # shown as FAILURE (the message is acknowledged: each action keeps its own claim)
        raise ActionFailedError(f"{len(reasons)} of {len(valid)} actions failed: " + "; ".join(reasons[:5]))
    return counts


def run_read(app: Celery, exp_id: str, run_id: str, rid: str, payload: dict[str, Any]) -> str:
    """Run a read (e.g. ``trace``) of an RM here and push the answer on the run's reply list."""
    ctx = runtime_of(app).context(exp_id, run_id)
    method = str(payload["m"])
    answer: dict[str, Any]
    try:
        if method not in READ_METHODS:
            raise ActionError(f"{method!r} is not a read")
        value = resolve_action(ctx.get_resource(int(payload["g"])), method)(*payload.get("a", []))
        if isinstance(value, bytes):
            answer = {"b": base64.b64encode(value).decode()}
        else:
            answer = {"v": value if _jsonable(value) else repr(value)}
    except Exception as exc:  # the task boundary: the reader gets the error
        answer = {"e": f"{type(exc).__name__}: {exc}"}
    reply = ctx.store.keys.reply(rid)
    pipe = ctx.store.client.pipeline(transaction=True)
    pipe.rpush(reply, json.dumps(answer))
    pipe.expire(reply, 300)
    pipe.execute()
    return "error" if "e" in answer else "done"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_setup_error(exc: Exception) -> bool:
    return isinstance(exc, (ActionError, UnknownResourceTypeError))


def _fail_resource(ctx: RunContext, guid: int, message: str, released: bool = False) -> None:
    """Fail an RM whose action this worker cannot run at all (unknown type or method).

    A release still ends in RELEASED (a release never fails): the error stays recorded.
    """
    from nepi_dist.model.state import ResourceState

    try:
        if ctx.store.rm_field(guid, "err") is None or not released:
            ctx.store.set_fields(guid, {"err": secrets.redact(message)})
        ctx._transition(guid, ResourceState.RELEASED if released else ResourceState.FAILED)
    except Exception as exc:  # the task boundary: record and go on
        log.error("could not fail guid %s: %s", guid, exc)


def signed(app: Celery, request: Any, exp_id: str, run_id: str, run: Callable[[], T]) -> T | str:
    """Return ``run()`` when signing is off or the message of ``request`` is signed, new and for its queue.

    Else nothing runs: the refusal is logged and recorded in the run's
    events, and the message acknowledged (see :mod:`nepi_dist.engine.signing`).
    A message that ran to its end is noted, so that the same message again
    is a replay; one cut short (rejected back to the queue) is not noted.
    """
    key = getattr(app, "nepi_signing_key", None)
    if key is None:
        return run()
    client = runtime_of(app).client
    reason = signing.check(key, request, client, exp_id, run_id)
    if reason is not None:
        signing.record_refusal(client, exp_id, run_id, request, reason)
        return f"refused:{reason}"
    try:
        result = run()
    except ActionFailedError:  # it ran to its end, failing: the same message again is a replay too
        signing.done(request, client, exp_id, run_id)
        raise
    signing.done(request, client, exp_id, run_id)
    return result


def _action(app: Celery, exp_id: str, run_id: str, aid: str, payload: dict[str, Any]) -> str:
    """Run one action; raise ActionFailedError (shown as FAILURE) when the RM's method failed."""
    verdict = run_action(app, exp_id, run_id, aid, payload)
    failed = failed_reasons([verdict])
    if failed:
        raise ActionFailedError(failed[0])
    return verdict


def register_tasks(app: Celery) -> None:
    """Register nepi's tasks on ``app`` (explicit names under ``nepi.``), each behind :func:`signed`."""

    # A failed RM action raises ActionFailedError, an expected error (``throws``): Celery's events
    # and Flower show FAILURE with the reason, and the worker logs it without a traceback.
    @app.task(name=ACTION_TASK, acks_late=True, ignore_result=True, shared=False, bind=True,
              throws=(ActionFailedError,))
    def action(self: Any, exp_id: str, run_id: str, aid: str, payload: dict[str, Any]) -> str:
        return signed(app, self.request, exp_id, run_id, functools.partial(_action, app, exp_id, run_id, aid, payload))

    @app.task(name=BATCH_TASK, acks_late=True, ignore_result=True, shared=False, bind=True,
              throws=(ActionFailedError,))
    def batch(self: Any, exp_id: str, run_id: str, items: list[Any]) -> dict[str, int] | str:
        return signed(app, self.request, exp_id, run_id, functools.partial(run_batch, app, exp_id, run_id, items))

    @app.task(name=READ_TASK, ignore_result=True, shared=False, bind=True)
    def read(self: Any, exp_id: str, run_id: str, rid: str, payload: dict[str, Any]) -> str:
        return signed(app, self.request, exp_id, run_id, functools.partial(run_read, app, exp_id, run_id, rid, payload))
