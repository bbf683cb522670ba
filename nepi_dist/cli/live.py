"""The live view of a run: counts per state, progress to FINISHED, the slowest and the failed RMs.

:class:`RunWatch` keeps a run's picture up to date from its event stream
(``XREAD BLOCK``: nothing polls the RMs; an RM's details are read once when it
appears and again when it fails).  :class:`LiveView` draws it with rich, on
its own thread, until told to stop.  It only reads: watching a run takes
nothing over from its workers.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from typing import Any

import redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nepi_dist.engine.connection import redis_client
from nepi_dist.engine.report import Row, error_tail, level_name, rows
from nepi_dist.engine.store import FailureLevel, Store
from nepi_dist.model.state import ResourceState

#: Milliseconds one read of the event stream blocks.
BLOCK_MS = 500
#: How many of the slowest and of the failed RMs the view shows.
SHOWN = 5
_STATE_STYLE = {ResourceState.FAILED: "bold red", ResourceState.FINISHED: "green", ResourceState.STARTED: "cyan",
                ResourceState.RELEASED: "dim", ResourceState.STOPPED: "yellow"}


class RunWatch:
    """One run's picture, brought up to date by :meth:`poll`. Thread-safe."""

    def __init__(self, store: Store, url: str | None = None) -> None:
        self.store = store
        self.url = url
        self.rows: dict[int, Row] = {}
        self.level = FailureLevel.OK
        self.released = False
        self.gone: str | None = None  # why Redis no longer answers
        self.began = time.monotonic()
        self._last = "0-0"
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> None:
        """Read every RM once (the event stream brings the changes after that)."""
        last = self.store.last_event_id()
        found = rows(self.store)
        with self._lock:
            self._last = last
            self.rows = {r.guid: r for r in found}
            self._loaded = True
        self._read_run()

    def _read_run(self) -> None:
        fl, released = self.store.client.hmget(self.store.keys.run, ["fl", "released"])
        with self._lock:
            self.level = int(fl or FailureLevel.OK)
            self.released = released is not None

    def poll(self, block_ms: int = BLOCK_MS) -> int:
        """Apply the events after the last one seen (blocking up to ``block_ms``); return how many."""
        if not self._loaded:
            self.load()
        events = self.store.events(self._last, block_ms)
        fetch: set[int] = set()
        with self._lock:
            for eid, fields in events:
                self._last = eid
                guid, state, at = int(fields["g"]), int(fields["s"]), float(fields["t"])
                if guid < 0:
                    continue  # a failure-level change: read below
                row = self.rows.get(guid)
                if row is None or state == ResourceState.FAILED:
                    fetch.add(guid)
                if row is not None:
                    row.state = max(row.state, state) if row.state != ResourceState.RELEASED else row.state
                    row.times[state] = at
            missing = len(self.rows) != self.store.client.zcard(self.store.keys.guids)
        if missing:
            fetch |= set(self.store.guids()) - set(self.rows)
        if fetch:
            found = rows(self.store, sorted(fetch))
            with self._lock:
                self.rows.update({r.guid: r for r in found})
        self._read_run()
        return len(events)

    # -- what the view shows ---------------------------------------------------

    def counts(self) -> Counter[int]:
        """RMs per state; a RELEASED one counts in the state it reached before its release."""
        with self._lock:
            return Counter(_outcome(r) for r in self.rows.values())

    def failed(self) -> list[Row]:
        with self._lock:
            return sorted((r for r in self.rows.values() if ResourceState.FAILED in r.times
                           or r.state == ResourceState.FAILED), key=lambda r: r.times.get(ResourceState.FAILED, 0))

    def slowest(self, now: float) -> list[Row]:
        """The RMs not yet done, longest in their current state first."""
        with self._lock:
            busy = [r for r in self.rows.values() if r.state < ResourceState.STOPPED]
        return sorted(busy, key=lambda r: now - (r.since or now), reverse=True)[:SHOWN]

    def done(self) -> tuple[int, int, int]:
        """(finished, ended: STOPPED or beyond, total)."""
        with self._lock:
            states = [r.state for r in self.rows.values()]
            finished = sum(1 for r in self.rows.values() if ResourceState.FINISHED in r.times)
        return finished, sum(1 for s in states if s >= ResourceState.STOPPED), len(states)


def _outcome(row: Row) -> int:
    """The state an RM reached, its release aside (RELEASED only when it reached nothing else)."""
    if row.state != ResourceState.RELEASED:
        return row.state
    reached = [s for s in row.times if s != ResourceState.RELEASED]
    return max(reached) if reached else row.state


def _state_text(state: int) -> Text:
    if state not in ResourceState._value2member_map_:
        return Text(str(state))
    return Text(ResourceState(state).name, style=_STATE_STYLE.get(ResourceState(state), ""))


def render(watch: RunWatch, title: str | None = None) -> RenderableType:
    """Draw the run's picture."""
    now = watch.store.now() if watch.gone is None else time.time()
    level = watch.level
    head = Text.assemble(
        ("run ", "bold"), (f"{watch.store.exp_id}/{watch.store.run_id}", "bold cyan"),
        ("  failure level ", ""), (level_name(level), "bold green" if level == FailureLevel.OK else "bold red"),
        ("  released" if watch.released else "  live", "dim" if watch.released else "bold"),
        (f"  {time.monotonic() - watch.began:.1f}s", "dim"),
    )
    if watch.url:
        head.append(f"  {watch.url}", style="dim")
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    parts.append(head)
    counts = watch.counts()
    states = Table.grid(padding=(0, 2))
    shown = [s for s in ResourceState if counts.get(s)]
    for _ in shown:
        states.add_column(justify="right")
    if shown:
        states.add_row(*[_state_text(s) for s in shown])
        states.add_row(*[str(counts[s]) for s in shown])
    parts.append(states)
    if watch.released:
        parts.append(Text("(each RM counted in the state it reached before its release)", style="dim"))
    finished, ended, total = watch.done()
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(total, 1), completed=finished, width=40),
                Text(f"{finished}/{total} FINISHED, {ended}/{total} ended"))
    parts.append(bar)
    slow = watch.slowest(now)
    if slow:
        table = Table(title="slowest", title_justify="left", expand=False, show_edge=False)
        for col in ("guid", "type", "state", "for", "host", "command"):
            table.add_column(col, overflow="fold")
        for r in slow:
            table.add_row(str(r.guid), r.rtype, _state_text(r.state), f"{now - (r.since or now):.1f}s",
                          r.host or "-", (r.command or "-")[:60])
        parts.append(table)
    failed = watch.failed()
    if failed:
        table = Table(title=f"failed ({len(failed)})", title_justify="left", title_style="bold red",
                      show_edge=False)
        for col in ("guid", "type", "host", "command", "error"):
            table.add_column(col, overflow="fold")
        for r in failed[-SHOWN:]:
            table.add_row(str(r.guid), r.rtype, r.host or "-", (r.command or "-")[:60], error_tail(r.error))
        parts.append(table)
    if watch.gone and not watch.released:
        parts.append(Text(f"Redis no longer answers: {watch.gone}", style="yellow"))
    return Group(*parts)


class LiveView:
    """Draws a run live while something else happens (the script runs, or nothing: ``watch``)."""

    def __init__(self, console: Console, transient: bool = False, svg: str | None = None) -> None:
        self.console = console
        self.svg = svg  # where to save the last drawing as an SVG picture
        self.watch: RunWatch | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = Live(console=console, refresh_per_second=4, transient=transient,
                          get_renderable=self._renderable, redirect_stdout=True, redirect_stderr=True)

    def _renderable(self) -> RenderableType:
        if self.watch is None:
            return Text("waiting for the experiment's controller…", style="dim")
        return render(self.watch)

    def follow(self, exp_id: str, run_id: str, url: str) -> None:
        """Show run ``exp_id``/``run_id`` from now on (its own Redis client: the view only reads)."""
        store = Store(redis_client(url, bound=BLOCK_MS / 1000 + 2), exp_id, run_id)
        self.watch = RunWatch(store, url)

    def start(self) -> LiveView:
        self._live.start()
        self._thread = threading.Thread(target=self._loop, name="nepi-live-view", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            watch = self.watch
            if watch is None or watch.gone:
                self._stop.wait(0.1)
                continue
            try:
                watch.poll()
            except redis.RedisError as exc:
                watch.gone = str(exc)
            except Exception as exc:  # the view's boundary: it must never take the run down
                watch.gone = f"{type(exc).__name__}: {exc}"

    def catch_up(self) -> None:
        """Read what happened since the last poll (at the end, before the last drawing)."""
        watch = self.watch
        if watch is not None and not watch.gone:
            with contextlib.suppress(redis.RedisError):
                watch.poll(block_ms=1)  # 0 would block for ever

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(BLOCK_MS / 1000 + 3)
        self._live.stop()
        if not self.console.is_terminal:
            self.console.line()  # the last drawing ends its line
        if self.svg and self.watch is not None:
            picture = Console(record=True, width=110, file=io.StringIO(), force_terminal=True)
            picture.print(render(self.watch))
            picture.save_svg(self.svg, title="nepi-dist")

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
