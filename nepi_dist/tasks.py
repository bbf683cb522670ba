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
from typing import TYPE_CHECKING, Any

import redis

from .batch import BATCH_TASK, BUFFER_SPREAD, SendBuffer, run_in_buffer
from .context import ACTION_TASK, READ_METHODS, READ_TASK, RELEASE_METHODS, RunContext, resolve_action
from .errors import ActionError, UnknownResourceTypeError
from .keys import worker_key
from .resource import ResourceFactory, ResourceRegistry
from .routing import POOL_QUEUE, this_worker_host
from .store import Store
from .workers import HEARTBEAT_EVERY, beat, clear_dead_in_my_space

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("nepi_dist.worker")

#: Batch threads of a worker process whose Celery concurrency is unknown.
BATCH_THREADS = 16
#: The queues a worker process consumes (set by ``nepi-dist worker``), for its heartbeat.
QUEUES_ENV = "NEPI_DIST_WORKER_QUEUES"


class WorkerRuntime:
    """What one worker process keeps between tasks: no RM state, only handles.

    A Redis client, the registry of RM types, a worker id with a heartbeat
    key in Redis (a claim held by a worker whose heartbeat expired may be
    taken over), and a small cache of run contexts.
    """

    def __init__(self, app: Celery, registry: ResourceRegistry) -> None:
        self.app = app
        self.registry = registry
        self.client = redis.Redis.from_url(app.conf.nepi_redis_url, decode_responses=True)
        self.worker_id = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(3).hex()}"
        self._contexts: dict[tuple[str, str], RunContext] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._batch_pool: ThreadPoolExecutor | None = None
        self.queues = [q for q in os.environ.get(QUEUES_ENV, POOL_QUEUE).split(",") if q]
        self._beat()
        cleared = clear_dead_in_my_space(self.client, self.worker_id)
        if cleared:
            log.warning("cleared the heartbeats of dead workers %s", ", ".join(cleared))
        self._thread = threading.Thread(target=self._heartbeat, name="nepi-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        beat(self.client, self.worker_id,
             {"machine": socket.gethostname(), "host": this_worker_host(), "queues": self.queues})

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            try:
                self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

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
        if self._batch_pool is not None:
            self._batch_pool.shutdown(wait=False, cancel_futures=True)
        for callback in self._on_stop:
            callback()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(worker_key(self.worker_id))

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


def run_action(app: Celery, exp_id: str, run_id: str, aid: str, payload: dict[str, Any]) -> str:
    """Claim and run one RM action; return what happened (for logs and tests)."""
    rt = runtime_of(app)
    ctx = rt.context(exp_id, run_id)
    method = str(payload["m"])
    verdict = ctx.store.claim(aid, rt.worker_id, method in RELEASE_METHODS)
    if verdict.startswith("wait:"):
        # Held by a worker that may be dead: look again once its heartbeat would have expired.
        later = ctx.store.heartbeat_left(verdict[5:]) + 0.5
        ctx._dispatch([(aid, payload, ctx.store.now() + later)], from_outbox=False)
        log.info("action %s %s on guid %s held by %s: looking again in %.1fs",
                 aid, method, payload.get("g"), verdict[5:], later)
        return verdict
    if verdict != "run":
        log.debug("action %s %s on guid %s: %s", aid, method, payload.get("g"), verdict)
        return verdict
    tracked = bool(payload.get("t"))
    status, result = "DONE", None
    try:
        rm = ctx.get_resource(int(payload["g"]))
        value = resolve_action(rm, method)(*payload.get("a", []), **payload.get("k", {}))
        result = value if _jsonable(value) else repr(value)
    except Exception as exc:
        status, result = "ERROR", traceback.format_exc()
        log.warning("action %s %s on guid %s failed: %s", aid, method, payload.get("g"), exc)
        if _is_setup_error(exc):
            _fail_resource(ctx, int(payload["g"]), f"{type(exc).__name__}: {exc}")
    finally:
        ctx.store.finish(aid, tracked, status, result)
    return status.lower()


def run_batch(app: Celery, exp_id: str, run_id: str, items: list[Any]) -> dict[str, int]:
    """Run the actions of a batch message concurrently; return how many ended how.

    Each action keeps its own claim, so a batch delivered again (its worker
    died) runs only what is not done yet.  The items run on the runtime's
    batch threads while this thread publishes what they send (see
    :mod:`nepi_dist.batch`) and waits for them (local futures, not Celery
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
    for future in futures:
        try:
            verdict = future.result()
        except Exception as exc:  # the task boundary: one action's crash does not drop the others
            log.error("batch action crashed: %s", exc)
            verdict = "crash"
        counts[verdict] = counts.get(verdict, 0) + 1
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


def _fail_resource(ctx: RunContext, guid: int, message: str) -> None:
    """Fail an RM whose action this worker cannot run at all (unknown type or method)."""
    from .state import ResourceState

    try:
        ctx.store.set_fields(guid, {"err": message})
        ctx._transition(guid, ResourceState.FAILED)
    except Exception as exc:  # the task boundary: record and go on
        log.error("could not fail guid %s: %s", guid, exc)


def register_tasks(app: Celery) -> None:
    """Register nepi's tasks on ``app`` (explicit names under ``nepi.``)."""

    @app.task(name=ACTION_TASK, acks_late=True, ignore_result=True, shared=False)
    def action(exp_id: str, run_id: str, aid: str, payload: dict[str, Any]) -> str:
        return run_action(app, exp_id, run_id, aid, payload)

    @app.task(name=BATCH_TASK, acks_late=True, ignore_result=True, shared=False)
    def batch(exp_id: str, run_id: str, items: list[Any]) -> dict[str, int]:
        return run_batch(app, exp_id, run_id, items)

    @app.task(name=READ_TASK, ignore_result=True, shared=False)
    def read(exp_id: str, run_id: str, rid: str, payload: dict[str, Any]) -> str:
        return run_read(app, exp_id, run_id, rid, payload)
