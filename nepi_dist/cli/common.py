"""What every ``nepi-dist`` command shares: the Redis it talks to, how it names a run, how it fails.

Exit codes, the same for every command: 0 done (a run: failure level OK),
1 an RM failure aborted the run, 2 a bad experiment, bad arguments, an EC
failure or a Redis that cannot be reached; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Annotated, NoReturn

import redis
import typer
from rich.console import Console

from nepi_dist.engine.celery_app import REDIS_URL_ENV
from nepi_dist.engine.keys import RUNS_KEY, Keys, check_id, parse_run_member
from nepi_dist.engine.store import Store
from nepi_dist.errors import ExperimentIdError

EXIT_OK = 0
EXIT_RM_FAILURE = 1
EXIT_BAD = 2
EXIT_INTERRUPTED = 130
#: What RUN may be to name the newest run of an experiment.
LATEST = "@latest"
#: Seconds a command waits for a Redis that does not answer before it says so.
COMMAND_BOUND = 3.0

#: Human output (stderr when --json owns stdout).
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar=REDIS_URL_ENV, show_envvar=True,
                 help="The run's Redis (broker and store); an embedded run prints its URL when it starts."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]


def fail(message: str, code: int = EXIT_BAD) -> NoReturn:
    """Say what went wrong on stderr and exit with ``code``."""
    err_console.print(f"[bold red]nepi-dist:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def connect(url: str | None) -> redis.Redis:
    """Return a client on the run's Redis, or exit 2 saying which variable to set or what failed."""
    if not url:
        fail(f"no Redis to read: give --redis-url or set {REDIS_URL_ENV} "
             "(an embedded run prints its URL when it starts, and lives only while its process does)")
    from nepi_dist.engine.connection import permanent_failure, redis_client, typed_error
    from nepi_dist.errors import NepiError

    client = redis_client(url, bound=COMMAND_BOUND)
    try:
        client.ping()
    except NepiError as exc:  # a refused TLS handshake or login, typed by the client already
        fail(f"cannot use Redis at {url}: {exc}")
    except redis.RedisError as exc:
        if permanent_failure(exc):
            fail(f"cannot use Redis at {url}: {typed_error(exc)}")
        fail(f"cannot reach Redis at {url}: {exc} (an embedded run's Redis ends with its process)")
    return client


@dataclass(frozen=True)
class RunRef:
    """One run found in Redis."""

    exp_id: str
    run_id: str
    started: float | None  # Redis-clock time (first event, else its entry in nepi:runs)
    live: bool  # not yet released (in nepi:runs)
    released: float | None


def _run_keys_pattern(exp_id: str | None) -> str:
    exp = "*" if exp_id is None else exp_id.replace("*", "\\*")
    return f"nepi:\\{{{exp}:*\\}}:run"


def find_runs(client: redis.Redis, exp_id: str | None = None) -> list[RunRef]:
    """Return every run in Redis (live ones and released ones not yet expired), oldest first.

    A SCAN of the key space for the runs' ``P:run`` hashes, plus ``nepi:runs``:
    an operator's command, not a per-action cost.
    """
    live = {}
    for member, score in client.zrange(RUNS_KEY, 0, -1, withscores=True):
        ids = parse_run_member(member)
        if ids is not None and (exp_id is None or ids[0] == exp_id):
            live[ids] = float(score)
    found: dict[tuple[str, str], RunRef] = {}
    for key in client.scan_iter(match=_run_keys_pattern(exp_id), count=1000):
        inner = key[len("nepi:{"):-len("}:run")]
        exp, _, run = inner.partition(":")
        if not exp or not run or (exp_id is not None and exp != exp_id):
            continue
        ids = (exp, run)
        keys = Keys(exp, run)
        first = client.xrange(keys.events, count=1)
        started = int(first[0][0].split("-")[0]) / 1000 if first else live.get(ids)
        released = client.hget(keys.run, "released")
        found[ids] = RunRef(exp, run, started, ids in live, float(released) if released else None)
    for ids, score in live.items():
        found.setdefault(ids, RunRef(ids[0], ids[1], score, True, None))
    return sorted(found.values(), key=lambda r: (r.started or 0.0, r.exp_id, r.run_id))


def resolve_run(client: redis.Redis, exp_id: str, run_id: str | None) -> Store:
    """Return the store of run ``exp_id``/``run_id`` (``@latest`` or none: the newest), or exit 2."""
    try:
        check_id("exp_id", exp_id)
        if run_id not in (None, LATEST):
            check_id("run_id", str(run_id))
    except ExperimentIdError as exc:
        fail(str(exc))
    if run_id in (None, LATEST):
        runs = find_runs(client, exp_id)
        if not runs:
            fail(f"no run of experiment {exp_id!r} in this Redis")
        run_id = runs[-1].run_id
    store = Store(client, exp_id, str(run_id))
    if not client.exists(store.keys.run):
        fail(f"no run {exp_id}/{run_id} in this Redis (released runs expire after their retention)")
    return store


def is_live(client: redis.Redis, store: Store) -> bool:
    """True while the run is not released (it is in ``nepi:runs``)."""
    return client.zscore(RUNS_KEY, store.keys.member) is not None


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
