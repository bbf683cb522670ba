"""Watches running applications and reports their exit, one thread per worker process.

Local processes are watched with a pidfd each (the kernel wakes the thread when
the process ends: no polling).  Processes on SSH hosts are checked with one
command per host every half second over the reused connection, whatever the
number of applications on that host.  Either way the RM hears of the exit
within a second, through :meth:`LinuxApplication.on_exit`.

Every watched application is also recorded in Redis (``nepi:watch``, see
:mod:`nepi_dist.engine.keys`) with the id of the worker watching it.  A worker
adopts entries whose watcher's heartbeat expired, so an application keeps
being watched when the worker that started it is restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shlex
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis

from nepi_dist.engine.keys import WATCH_KEY, worker_key
from nepi_dist.resources.linux.shell import HostSpec, shell_for

if TYPE_CHECKING:
    from celery import Celery

    from nepi_dist.engine.context import RunContext

log = logging.getLogger("nepi_dist.watcher")

SSH_CHECK_EVERY = 0.5
#: Fields of a host spec that are credentials: never written to the shared watch record.
SECRET_FIELDS = ("identity", "password")
ADOPT_EVERY = 3.0


@dataclass
class Watched:
    exp_id: str
    run_id: str
    guid: int
    host: dict[str, Any]
    home: str
    pid: int
    machine: str

    @property
    def field(self) -> str:
        return f"{self.exp_id}|{self.run_id}|{self.guid}"

    @property
    def spec(self) -> HostSpec:
        return HostSpec(**self.host)


class Watcher:
    """The watcher thread of one worker process."""

    def __init__(self, app: Celery) -> None:
        from nepi_dist.engine.tasks import runtime_of

        self._app = app
        self._runtime = runtime_of(app)
        self._client: redis.Redis = self._runtime.client
        self._lock = threading.Lock()
        self._local: dict[int, Watched] = {}  # pidfd -> entry
        self._remote: dict[str, Watched] = {}  # field -> entry
        self._wake_r, self._wake_w = os.pipe()
        # epoll, not select(): a worker with many connections has fds past select()'s 1024.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nepi-watch-report")
        self._stopped = threading.Event()
        self._runtime.on_stop(self.stop)
        self._thread = threading.Thread(target=self._loop, name="nepi-watcher", daemon=True)
        self._thread.start()

    def record(self, entry: Watched) -> None:
        """Record in Redis that this worker watches ``entry`` (survives this worker).

        The record is shared by all runs: it keeps no credential of the host
        (its ``identity`` and ``password``, marked ``secret``); a worker
        adopting the watch reads them from the run's node (:meth:`_adopt`).
        """
        host = {k: v for k, v in entry.host.items() if k not in SECRET_FIELDS}
        if len(host) != len(entry.host) and any(entry.host.get(k) for k in SECRET_FIELDS):
            host["secret"] = True
        record = dict(asdict(entry), host=host, holder=self._runtime.worker_id)
        self._client.hset(WATCH_KEY, entry.field, json.dumps(record))

    def add(self, entry: Watched) -> None:
        self.record(entry)
        self._track(entry)

    def _track(self, entry: Watched) -> None:
        if entry.spec.local:
            try:
                fd = os.pidfd_open(entry.pid)
            except ProcessLookupError:
                self._report(entry)
                return
            with self._lock:
                if self._stopped.is_set():  # the worker is stopping: its successor adopts the record
                    os.close(fd)
                    return
                self._local[fd] = entry
                self._selector.register(fd, selectors.EVENT_READ)
            self._wake()
        else:
            with self._lock:
                self._remote[entry.field] = entry

    def _report(self, entry: Watched, code: int | str | None = "unknown") -> None:
        """Tell the RM its process ended, on the report pool (slow reports don't delay others)."""
        self._pool.submit(self._tell, entry, code)

    def _tell(self, entry: Watched, code: int | str | None) -> None:
        try:
            if code == "unknown":
                code = self._exit_code(entry)
            ctx = self._runtime.context(entry.exp_id, entry.run_id)
            rm = ctx.get_resource(entry.guid)
            rm.on_exit(code, entry.pid)  # type: ignore[attr-defined]
        except Exception:  # the pool boundary: record and go on watching the others
            log.exception("could not report the exit of guid %s", entry.guid)
        finally:
            with contextlib.suppress(redis.RedisError):
                self._client.hdel(WATCH_KEY, entry.field)

    @staticmethod
    def _exit_code(entry: Watched) -> int | None:
        path = f"{entry.home}/exitcode"
        try:
            if entry.spec.local:
                with open(path) as f:
                    text = f.read()
            else:
                text = shell_for(entry.spec).run(f"cat {shlex.quote(path)} 2>/dev/null").stdout
        except FileNotFoundError:
            return None
        return _parse_code(text)

    def stop(self) -> None:
        """Stop watching (the worker is stopping); running applications are left alone."""
        self._stopped.set()
        self._wake()
        self._thread.join(5)
        if not self._thread.is_alive():
            os.close(self._wake_w)
        self._pool.shutdown(wait=True)
        with _WATCHERS_LOCK:
            if _WATCHERS.get(id(self._app)) is self:
                del _WATCHERS[id(self._app)]

    def _loop(self) -> None:
        next_remote = next_adopt = time.monotonic()
        while not self._stopped.is_set():
            try:
                self._turn()
                now = time.monotonic()
                if now >= next_remote:
                    next_remote = now + SSH_CHECK_EVERY
                    self._check_remote()
                if now >= next_adopt:
                    next_adopt = now + ADOPT_EVERY
                    self._adopt()
            except Exception:  # the loop boundary: a watcher that dies would miss every exit after
                log.exception("the watcher's turn failed; watching on")
                self._stopped.wait(SSH_CHECK_EVERY)
        with self._lock:
            for fd in self._local:
                os.close(fd)
            self._local.clear()
            self._selector.close()
        os.close(self._wake_r)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the loop ended and closed its end
            os.write(self._wake_w, b"x")

    def _turn(self) -> None:
        """Wait up to one remote-check period for local exits, and report them."""
        for key, _ in self._selector.select(SSH_CHECK_EVERY):
            fd = key.fd
            if fd == self._wake_r:
                os.read(self._wake_r, 4096)
                continue
            with self._lock:
                entry = self._local.pop(fd)
                self._selector.unregister(fd)
            os.close(fd)
            self._report(entry)

    def _check_remote(self) -> None:
        with self._lock:
            entries = list(self._remote.values())
        by_host: dict[HostSpec, list[Watched]] = {}
        for e in entries:
            by_host.setdefault(e.spec, []).append(e)
        for spec, group in by_host.items():
            homes = " ".join(shlex.quote(e.home) for e in group)
            probe = (
                f"for d in {homes}; do "
                "if [ -e \"$d/exitcode\" ]; then echo \"$d $(cat \"$d/exitcode\")\"; "
                "elif ! { [ -s \"$d/.pid\" ] && kill -0 \"$(cat \"$d/.pid\")\"; } 2>/dev/null; "
                "then echo \"$d -\"; fi; done"
            )
            try:
                lines = shell_for(spec).run(probe).stdout.splitlines()
            except Exception as exc:  # the loop boundary: an unreachable host is retried
                log.warning("cannot check applications on %s: %s", spec.hostname, exc)
                continue
            ended = dict(line.rsplit(" ", 1) for line in lines if " " in line)
            for e in group:
                if e.home in ended:
                    with self._lock:
                        self._remote.pop(e.field, None)
                    self._report(e, _parse_code(ended[e.home]))

    def _adopt(self) -> None:
        """Take over entries whose watcher died (its heartbeat expired)."""
        try:
            entries = self._client.hgetall(WATCH_KEY)
            if not entries:
                return
            records = {f: json.loads(v) for f, v in entries.items()}
            holders = sorted({r["holder"] for r in records.values()})
            beats = self._client.mget([worker_key(h) for h in holders])
            # A tombstone ({"dead": true}, left by a successor) is a dead holder, as is no heartbeat.
            alive = {h for h, b in zip(holders, beats, strict=True) if b is not None and not json.loads(b).get("dead")}
            machine = socket.gethostname()
            for rec in records.values():
                if rec["holder"] in alive:
                    continue
                entry = Watched(**{k: v for k, v in rec.items() if k != "holder"})
                if entry.host.pop("secret", False):
                    app = self._runtime.context(entry.exp_id, entry.run_id).get_resource(entry.guid)
                    entry.host = asdict(app.node.host_spec())  # type: ignore[attr-defined]
                if entry.spec.local and entry.machine != machine:
                    continue
                log.warning("adopting the watch of guid %s from %s", entry.guid, rec["holder"])
                self.add(entry)
        except redis.RedisError as exc:
            log.warning("cannot adopt watches: %s", exc)


def _parse_code(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


_WATCHERS: dict[int, Watcher] = {}
_WATCHERS_LOCK = threading.Lock()


def watcher_for(app: Celery) -> Watcher:
    """Return this process's watcher for a Celery app (started on first use)."""
    with _WATCHERS_LOCK:
        w = _WATCHERS.get(id(app))
        if w is None:
            w = Watcher(app)
            _WATCHERS[id(app)] = w
        return w


def watch(ctx: RunContext, guid: int, spec: HostSpec, home: str, pid: int, started: Callable[[], object]) -> None:
    """Watch the application ``guid`` whose session leader is ``pid``.

    The watch is recorded in Redis before ``started()`` (the RM's transition to
    STARTED) and tracked after it, so neither a worker dying in between nor a
    very short process is missed.
    """
    entry = Watched(ctx.exp_id, ctx.run_id, guid, asdict(spec), home, pid, socket.gethostname())
    w = watcher_for(ctx.app)
    w.record(entry)
    started()
    w._track(entry)
