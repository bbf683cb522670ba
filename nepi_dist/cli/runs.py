"""Commands on any run, from any machine that reaches its Redis, while it runs or after.

``ls``, ``status``, ``logs`` and ``watch`` only read.  ``abort`` ends a run
(nothing new starts, the pending actions are revoked, every RM released) and
``clean`` deletes the keys of released runs, or of one given run (never a live
one without ``--force``).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from nepi_dist.cli.common import (
    EXIT_BAD,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RM_FAILURE,
    JsonFlag,
    RedisUrl,
    connect,
    console,
    fail,
    find_runs,
    is_live,
    resolve_run,
)
from nepi_dist.engine.keys import RUNS_KEY, WATCH_KEY
from nepi_dist.engine.report import describe, level_name, rows
from nepi_dist.engine.store import FailureLevel, Store
from nepi_dist.model.state import ResourceState
from nepi_dist.model.timefuncs import delay_seconds

ExpArg = Annotated[str, typer.Argument(help="The experiment's exp_id.")]
RunArg = Annotated[str | None, typer.Argument(help="The run_id, or @latest (the default): the newest run.")]


def exit_code_of(level: int) -> int:
    """The exit code a run's failure level gives: 0 OK, 1 RM_FAILURE, 2 EC_FAILURE."""
    return {FailureLevel.OK: EXIT_OK, FailureLevel.RM_FAILURE: EXIT_RM_FAILURE}.get(level, EXIT_BAD)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def ls(redis_url: RedisUrl = None, exp_id: Annotated[str | None, typer.Option(
        "--exp", help="Only the runs of this exp_id.")] = None, json_: JsonFlag = False) -> None:
    """List the runs in Redis: exp_id, run_id, started, counts per state, failure level, live or released."""
    client = connect(redis_url)
    out: list[dict[str, Any]] = []
    for ref in find_runs(client, exp_id):
        store = Store(client, ref.exp_id, ref.run_id)
        guids = store.guids()
        counts: dict[str, int] = {}
        for s in store.states(guids):
            if s is not None:
                name = ResourceState(s).name
                counts[name] = counts.get(name, 0) + 1
        out.append({"exp_id": ref.exp_id, "run_id": ref.run_id, "started": ref.started,
                    "failure_level": level_name(store.failure_level()), "live": ref.live,
                    "released": ref.released, "states": counts})
    if json_:
        print(json.dumps(out))
        return
    table = Table(show_edge=False)
    for col in ("exp_id", "run_id", "started", "states", "failure level", ""):
        table.add_column(col)
    for r in out:
        states = " ".join(f"{k}={v}" for k, v in r["states"].items()) or "-"
        level = r["failure_level"]
        table.add_row(r["exp_id"], r["run_id"], _when(r["started"]), states,
                      f"[green]{level}[/]" if level == "OK" else f"[red]{level}[/]",
                      "live" if r["live"] else "released")
    console.print(table)
    console.print(f"{len(out)} run(s)")


def status(exp_id: ExpArg, run_id: RunArg = None, redis_url: RedisUrl = None, json_: JsonFlag = False) -> None:
    """Show one run: every RM with its state, type, host, times and error. Exit code: the run's (0, 1, 2)."""
    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    found = rows(store)
    level = store.failure_level()
    live = is_live(client, store)
    if json_:
        print(json.dumps({"exp_id": store.exp_id, "run_id": store.run_id, "failure_level": level_name(level),
                          "live": live, "resources": [r.as_json() for r in found]}))
        raise typer.Exit(exit_code_of(level))
    console.print(f"run [bold cyan]{store.exp_id}/{store.run_id}[/]  failure level "
                  f"{'[green]' if level == FailureLevel.OK else '[red]'}{level_name(level)}[/]  "
                  f"{'live' if live else 'released'}")
    table = Table(show_edge=False)
    for col in ("guid", "type", "state", "host", "started", "ended", "error"):
        table.add_column(col, overflow="fold")
    for r in found:
        start = r.times.get(ResourceState.STARTED)
        end = next((r.times[s] for s in (ResourceState.FINISHED, ResourceState.FAILED, ResourceState.STOPPED)
                    if s in r.times), None)
        table.add_row(str(r.guid), r.rtype, r.state_name, r.host or "-", _when(start), _when(end),
                      (r.error or "").strip().splitlines()[-1] if r.error else "")
    console.print(table)
    for r in found:
        if ResourceState.FAILED in r.times:
            console.print(f"[red]FAILED[/] {describe(r)}", soft_wrap=True)
    raise typer.Exit(exit_code_of(level))


def logs(
    exp_id: ExpArg,
    run_id: RunArg = None,
    guid: Annotated[int | None, typer.Argument(help="Only this RM's events (or, with TRACE, its trace).")] = None,
    trace: Annotated[str | None, typer.Argument(help="A trace of GUID to print (stdout, stderr, ...).")] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new events as they happen, "
                                         "until the run is released; with TRACE, keep printing what the trace "
                                         "gains (as tail -f), until its RM stops, finishes, fails or is "
                                         "released (Ctrl-C stops).")] = False,
    redis_url: RedisUrl = None,
    json_: JsonFlag = False,
) -> None:
    """Print the run's event stream (every state change, on the Redis clock), or one RM's trace; -f follows
    either (the trace as tail -f does, until its RM has ended)."""
    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    if trace is not None:
        if guid is None:
            fail("a TRACE needs its GUID")
        try:
            _print_trace(store, guid, trace, redis_url, follow)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        return
    rtypes: dict[int, str] = {}

    def show(eid: str, fields: dict[str, str]) -> None:
        g, s, t = int(fields["g"]), int(fields["s"]), float(fields["t"])
        if guid is not None and g != guid:
            return
        if g < 0:
            line = {"time": t, "event": "failure_level", "failure_level": level_name(s)}
        else:
            if g not in rtypes:
                rtypes[g] = store.rm_field(g, "rtype") or "?"
            line = {"time": t, "guid": g, "rtype": rtypes[g], "state": ResourceState(s).name}
        if json_:
            print(json.dumps(line), flush=True)
        elif g < 0:
            print(f"{_when(t)}.{int(t % 1 * 1000):03d}  run failure level {level_name(s)}", flush=True)
        else:
            print(f"{_when(t)}.{int(t % 1 * 1000):03d}  guid {g:<5} {rtypes[g]:<22} {line['state']}", flush=True)

    last = "0-0"
    try:
        for eid, fields in client.xrange(store.keys.events):
            show(eid, fields)
            last = eid
        while follow and is_live(client, store):
            for eid, fields in store.events(last, 500):
                show(eid, fields)
                last = eid
        if follow:  # the release's last events came before the run left nepi:runs
            for eid, fields in client.xrange(store.keys.events, min=f"({last}"):
                show(eid, fields)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


#: The states after which an RM's trace grows no more: ``logs TRACE -f`` reads it once more and ends.
_TRACE_ENDED = ResourceState.STOPPED
#: Milliseconds ``logs TRACE -f`` blocks on the run's event stream between two reads of the trace: no event
#: says a host file grew, so this bounds how stale the output can be.
_TRACE_POLL_MS = 1000


def _print_trace(store: Store, guid: int, trace: str, url: str | None, follow: bool = False) -> None:
    """Print a trace, read the way the controller reads it (through the host's worker when needed).

    With ``follow``, as ``tail -f``: after each blocking read of the run's event stream (an event, or
    :data:`_TRACE_POLL_MS`), the trace is read again and only the bytes beyond those printed are
    printed; once the RM has stopped, finished, failed or been released, or the run is released,
    it is read a last time and the command ends.
    """
    from nepi_dist.engine.celery_app import create_app
    from nepi_dist.engine.context import RunContext
    from nepi_dist.engine.startup import load_resource_types, modules_from_env
    from nepi_dist.errors import NepiError
    from nepi_dist.model.resource import ResourceFactory

    load_resource_types(modules_from_env())
    app = create_app(url)
    try:
        context = RunContext(store, app, ResourceFactory)
        newest = store.client.xrevrange(store.keys.events, count=1)
        last = str(newest[0][0]) if newest else "0-0"
        printed = 0
        while True:
            ended = not follow or _trace_ended(store, guid)  # seen before the read: that read is the last
            try:
                data = context.trace(guid, trace)
            except NepiError as exc:
                fail(f"trace {trace} of guid {guid}: {exc}")
            printed = _write_beyond(data, printed)
            if ended:
                return
            for eid, _ in store.events(last, _TRACE_POLL_MS):
                last = eid
    finally:
        app.close()


def _trace_ended(store: Store, guid: int) -> bool:
    """True once the RM ``guid`` is past STARTED (its trace grows no more) or the run is released."""
    (state,) = store.states([guid])
    return not is_live(store.client, store) or (state is not None and state >= _TRACE_ENDED)


def _write_beyond(data: Any, printed: int) -> int:
    """Write the bytes of a trace's ``data`` beyond the first ``printed``; return how many it holds now.

    A trace shorter than what was printed was rewritten: it is printed again from its start.
    """
    if data is None:
        return printed
    raw = data if isinstance(data, bytes) else str(data).encode()
    if len(raw) < printed:
        printed = 0
    if len(raw) > printed:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw[printed:])
        sys.stdout.buffer.flush()
    return len(raw)


def watch(exp_id: ExpArg, run_id: RunArg = None, redis_url: RedisUrl = None,
          svg: Annotated[str | None, typer.Option(help="Also save the last drawing as an SVG picture.")] = None,
          ) -> None:
    """Watch a run live (read-only) until it is released; exit code: the run's (0, 1, 2); Ctrl-C leaves."""
    from nepi_dist.cli.live import LiveView

    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    view = LiveView(console, svg=svg)
    view.follow(store.exp_id, store.run_id, str(redis_url))
    try:
        with view:
            while view.watch is not None and not view.watch.released and not view.watch.gone:
                time.sleep(0.2)
            view.catch_up()
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(exit_code_of(store.failure_level()))


def abort(
    exp_id: ExpArg,
    run_id: Annotated[str, typer.Argument(help="The run_id, or @latest: the newest run.")],
    redis_url: RedisUrl = None,
    release: Annotated[bool, typer.Option(help="Also release every RM (stops its applications) and retire the "
                                          "run; --no-release only aborts: nothing new starts.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds the release waits for the workers.")] = 120.0,
) -> None:
    """Abort a run: failure level EC_FAILURE, every pending action revoked, then every RM released."""
    from nepi_dist.engine.failure import ABORTED

    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    if not is_live(client, store):
        fail(f"run {store.exp_id}/{store.run_id} is released already")
    who = f"{os.environ.get('USER', '?')}@{socket.gethostname()}"
    pipe = client.pipeline(transaction=True)
    pipe.hset(store.keys.run, "why", f"aborted by {who} with nepi-dist abort")
    pipe.execute()
    store.set_failure_level(FailureLevel.EC_FAILURE)
    store.ring_alarm(ABORTED)  # an attached controller says so at once
    console.print(f"run {store.exp_id}/{store.run_id} aborted (failure level EC_FAILURE)")
    if not release:
        return
    from nepi_dist.ec import ExperimentController

    ec = ExperimentController(store.exp_id, store.run_id, redis_url=redis_url, local_worker=False)
    try:
        ec.release(timeout=timeout)
    finally:
        ec._stop_machinery()
    console.print(f"released {len(store.guids())} resources; the run's keys expire after the retention")


def clean(
    exp_id: Annotated[str | None, typer.Argument(help="Only this experiment's runs.")] = None,
    run_id: Annotated[str | None, typer.Argument(help="Only this run (@latest: the newest).")] = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="Only runs released longer ago than this (e.g. 7d, 12h, 30m, 90s).")] = None,
    force: Annotated[bool, typer.Option(help="Also delete a live run (its workers lose it).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Delete the keys of released runs (or of one given run; a live one only with --force)."""
    client = connect(redis_url)
    limit = _age(older_than)
    if run_id is not None:
        if exp_id is None:
            fail("a RUN needs its EXP")
        store = resolve_run(client, exp_id, run_id)
        targets = [(store.exp_id, store.run_id, is_live(client, store))]
        if targets[0][2] and not force:
            fail(f"run {store.exp_id}/{store.run_id} is live: abort it first, or give --force")
    else:
        now = Store(client, "x", "x").now()
        targets = [(r.exp_id, r.run_id, r.live) for r in find_runs(client, exp_id)
                   if (not r.live or force) and (limit is None or (r.released or now) <= now - limit)]
    deleted = 0
    for exp, run, live in targets:
        store = Store(client, exp, run)
        keys = list(client.scan_iter(match=store.keys.pattern(), count=1000))
        print(f"{'would delete' if dry_run else 'deleting'} {exp}/{run} ({len(keys)} keys"
              f"{', live' if live else ''})")
        if dry_run:
            continue
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.zrem(RUNS_KEY, store.keys.member)
        watched = [f for f, _ in client.hscan_iter(WATCH_KEY, match=f"{exp}|{run}|*")]
        if watched:
            client.hdel(WATCH_KEY, *watched)
        deleted += 1
    print(f"{deleted} run(s) deleted" if not dry_run else f"{len(targets)} run(s) would be deleted")


def _age(text: str | None) -> float | None:
    if text is None:
        return None
    raw = text.strip()
    days = raw.endswith("d") and raw[:-1].replace(".", "", 1).isdigit()
    try:
        return float(raw[:-1]) * 86400 if days else float(delay_seconds(raw))
    except (ValueError, TypeError):
        fail(f"--older-than {text!r}: a duration such as 7d, 12h, 30m or 90s")
    return None


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("ls", help=ls.__doc__)(ls)
    app.command("status", help=status.__doc__)(status)
    app.command("get", help="Same as status.", hidden=True)(status)
    app.command("logs", help=logs.__doc__)(logs)
    app.command("watch", help=watch.__doc__)(watch)
    app.command("abort", help=abort.__doc__)(abort)
    app.command("clean", help=clean.__doc__)(clean)
