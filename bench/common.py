"""Shared machinery of the benchmarks.

A :class:`Cluster` is a private redis-server plus K external ``nepi-dist
worker`` processes (thread pool) that load :mod:`bench.rms`.  The same
workers serve nepi_dist's ``nepi.action`` and the raw ``bench.noop`` task,
so the raw Celery floor and nepi_dist are measured on the same Redis, the
same worker processes and the same Celery settings (``nepi_dist.engine.celery_app.settings``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from nepi_dist.engine.celery_app import REDIS_URL_ENV, create_app, settings
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.routing import POOL_QUEUE

from .rms import HOP_TASK, NOOP_TASK, STAMP_TASK

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- options -------------------------------------------------------------------------


def bench_parser(
    name: str, doc: str | None, *, workers: bool = True, timeout: float | None = None
) -> argparse.ArgumentParser:
    """The argument parser of ``python -m bench.<name>``, with the options the benchmarks share.

    ``--concurrency`` always; ``--workers`` (one count) unless the benchmark
    takes several; ``--timeout`` when given a default.
    """
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").split("\n")[0])
    if workers:
        parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (default 8)")
    if timeout is not None:
        parser.add_argument("--timeout", type=float, default=timeout,
                            help=f"wait at most this long, s (default {timeout:g})")
    return parser


# -- processes -----------------------------------------------------------------------


#: ``always`` or ``everysec``: the benchmark's Redis keeps an append-only file, fsynced so
#: (unset: none, as the embedded default).  What ``appendfsync always`` costs: README, Reliability.
AOF_ENV = "NEPI_BENCH_AOF"


def start_redis() -> EmbeddedRedis:
    """Start a private redis-server on a free loopback port (with an AOF when :data:`AOF_ENV` says so)."""
    fsync = os.environ.get(AOF_ENV, "")
    if fsync not in ("", "always", "everysec"):
        raise SystemExit(f"{AOF_ENV} must be always or everysec, not {fsync!r}")
    return EmbeddedRedis(appendonly=bool(fsync), appendfsync=fsync or "always").start()


def start_workers(
    url: str, count: int, concurrency: int, pool: str = "threads", log_dir: str | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` ``nepi-dist worker`` processes serving ``url`` (they load bench.rms)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{REDIS_URL_ENV: url})
    procs = []
    for k in range(1, count + 1):
        cmd = [
            sys.executable, "-m", "nepi_dist.cli", "worker",
            "--concurrency", str(concurrency),
            "--pool", pool,
            "--rm-module", "bench.rms",
            "--hostname", f"b{k}@%h",
        ]
        out: Any = subprocess.DEVNULL
        if log_dir is not None:
            out = open(os.path.join(log_dir, f"worker-{k}.log"), "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT))
        if out is not subprocess.DEVNULL:
            out.close()
    return procs


def wait_for_workers(url: str, count: int, timeout: float = 60.0) -> None:
    """Block until ``count`` Celery workers answer a ping on ``url``."""
    app = create_app(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= count:
            return
    raise RuntimeError(f"fewer than {count} workers answered a ping on {url} within {timeout}s")


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop worker processes (warm shutdown, then kill), each by its own pid."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def self_cpu() -> float:
    """CPU seconds (user + system) used so far by this process (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Cluster:
    """A private Redis and K external workers; a context manager."""

    def __init__(self, workers: int = 1, concurrency: int = 8, pool: str = "threads") -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.pool = pool
        self.log_dir = tempfile.mkdtemp(prefix="nepi-bench-")
        self.redis: EmbeddedRedis | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def start(self) -> Cluster:
        self.redis = start_redis()
        try:
            self.procs = start_workers(self.url, self.workers, self.concurrency, self.pool, self.log_dir)
            wait_for_workers(self.url, self.workers)
        except BaseException:
            self.stop(keep_logs=True)
            raise
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        pids = ", ".join(str(p.pid) for p in self.procs)
        print(f"# redis {self.url}; worker pids {pids} (attach py-spy here); logs in {self.log_dir}",
              file=sys.stderr, flush=True)
        return self

    def stop(self, keep_logs: bool = False) -> None:
        stop_workers(self.procs)
        self.procs = []
        if keep_logs:
            print(f"# worker logs kept in {self.log_dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def restart_workers(self) -> None:
        """Stop the workers, drop every queued or unacknowledged message, start fresh workers.

        A worker holding many revoked ETA tasks disposes of them at kombu's
        timer pace (10 per event-loop iteration, an idle loop iterates about
        once a second); a fresh worker isolates the next measurement from them.
        """
        stop_workers(self.procs)
        self.client.delete(POOL_QUEUE, "unacked", "unacked_index", "unacked_mutex")
        self.procs = start_workers(self.url, self.workers, self.concurrency, self.pool, self.log_dir)
        wait_for_workers(self.url, self.workers)
        pids = ", ".join(str(p.pid) for p in self.procs)
        print(f"# workers restarted: pids {pids}", file=sys.stderr, flush=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop(keep_logs=exc_type is not None)

    # -- measurements ------------------------------------------------------------------

    def worker_cpu(self) -> float:
        """CPU seconds used so far by all worker processes (threads pool: one process each)."""
        total = 0.0
        for p in self.procs:
            total += process_cpu(p.pid)
            for pid in children(p.pid):  # prefork pool processes, if any
                with contextlib.suppress(OSError):
                    total += process_cpu(pid)
        return total

    def redis_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def lpush_calls(self) -> int:
        """LPUSH calls so far: kombu's Redis transport publishes every message with one LPUSH."""
        stats = self.client.info("commandstats")
        return int(stats.get("cmdstat_lpush", {}).get("calls", 0))

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def commands(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def command_calls(self) -> dict[str, int]:
        """Calls so far of every Redis command (``INFO commandstats``; commands run by Lua scripts included)."""
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def snapshot(self) -> dict[str, float]:
        """Counters to diff around a measured phase."""
        return {
            "wall": time.perf_counter(),
            "ctl_cpu": self_cpu(),
            "worker_cpu": self.worker_cpu(),
            "redis_cpu": self.redis_cpu(),
            "lpush": self.lpush_calls(),
            "cmds": self.commands(),
        }

    def delta(self, before: dict[str, float]) -> dict[str, float]:
        after = self.snapshot()
        return {k: after[k] - before[k] for k in before}


# -- the raw Celery baseline --------------------------------------------------------------


def raw_app(url: str) -> Celery:
    """A plain Celery app on ``url`` with exactly nepi_dist's Celery settings."""
    app = Celery("bench", set_as_current=False)
    app.conf.update(settings(url))
    return app


def run_noops(app: Celery, client: redis.Redis, n: int, timeout: float = 600.0) -> float:
    """Publish ``n`` raw noop tasks, block until all ran; return the seconds it took.

    The tasks are published the way nepi_dist publishes its actions (one
    producer, ``send_task`` with an explicit id and queue).  Each noop
    increments a counter; the last one pushes on ``<counter>:done``, on which
    this function blocks (no polling).
    """
    counter = f"bench:noop:{os.urandom(6).hex()}"
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task(
                NOOP_TASK,
                args=[counter, n],
                task_id=f"{counter}.{i}",
                queue=POOL_QUEUE,
                producer=producer,
            )
    deadline = time.monotonic() + timeout
    # BLPOP in slices: redis-py 8 clients time out a socket read after 5 s by default
    while client.blpop([f"{counter}:done"], timeout=2) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} noop tasks did not all run within {timeout}s")
    elapsed = time.perf_counter() - t0
    client.delete(counter, f"{counter}:done")
    return elapsed


def run_hops(app: Celery, client: redis.Redis, n: int, timeout: float = 300.0) -> list[float]:
    """Raw Celery's chained hop: ``n`` tasks, each publishing the next; return the n-1 hop times (s).

    Each ``bench.hop`` task records when its body ran, then publishes the next
    link with ``send_task``; a hop is the time between two consecutive links.
    """
    key = f"bench:hop:{os.urandom(6).hex()}"
    app.send_task(HOP_TASK, args=[key, 0, n], task_id=f"{key}.0", queue=POOL_QUEUE)
    times = [float(t) for t in wait_list(client, key, n, timeout)]
    client.delete(key)
    return [b - a for a, b in itertools.pairwise(times)]


def publish_stamps(app: Celery, key: str, dues: list[float]) -> list[str]:
    """Publish one raw ``bench.stamp`` task per due time (epoch seconds) with that ETA; return the task ids."""
    ids = [f"{key}.{i}" for i in range(len(dues))]
    with app.producer_or_acquire() as producer:
        for tid, due in zip(ids, dues, strict=True):
            app.send_task(
                STAMP_TASK,
                args=[key, due],
                task_id=tid,
                queue=POOL_QUEUE,
                eta=datetime.datetime.fromtimestamp(due, tz=datetime.UTC),
                producer=producer,
            )
    return ids


def wait_list(client: redis.Redis, key: str, n: int, timeout: float, poll: float = 0.05) -> list[str]:
    """Wait until list ``key`` holds ``n`` items; return them (raise after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while client.llen(key) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key}: {client.llen(key)} of {n} items after {timeout}s")
        time.sleep(poll)
    return list(client.lrange(key, 0, -1))


def stamps(items: list[str]) -> list[tuple[float, float]]:
    """Parse "<ran> <due>" records (``bench.stamp``, ``bench::Probe``) into (ran, due) pairs."""
    pairs = [item.split() for item in items]
    return [(float(ran), float(due)) for ran, due in pairs]


def wait_for(predicate: Any, timeout: float, poll: float = 0.01, what: str = "condition") -> float:
    """Poll ``predicate()`` until true; return the local time it first was (raise after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout}s")
        time.sleep(poll)
    return time.time()


def delete_run_keys(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching ``pattern`` (a finished run's keys); return how many."""
    n = 0
    batch: list[str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += client.unlink(*batch)
            batch = []
    if batch:
        n += client.unlink(*batch)
    return n


# -- reporting ------------------------------------------------------------------------------


def quantiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50, p99, max and mean of ``values`` times ``scale`` (default: seconds to ms)."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "mean": float("nan")}
    v = sorted(values)

    def pick(q: float) -> float:
        return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))] * scale

    return {"n": len(v), "p50": pick(0.5), "p99": pick(0.99), "max": v[-1] * scale, "mean": scale * sum(v) / len(v)}


def fmt_q(q: dict[str, float]) -> str:
    """``p50 … / p99 … / max … ms``."""
    return f"p50 {q['p50']:.2f} / p99 {q['p99']:.2f} / max {q['max']:.2f} ms (n={q['n']})"


def machine() -> str:
    import celery
    import kombu

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return (
        f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__}, "
        f"nepi_dist at {commit or 'unknown commit'}"
    )


def today() -> str:
    return datetime.date.today().isoformat()


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * (w - 1) + ":" for w in widths) + " |"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def setup_logging() -> None:
    """Show the library's warnings tersely."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
