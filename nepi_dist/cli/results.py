"""``nepi-dist results`` (every enabled trace of a run into a folder) and ``nepi-dist plot`` (its timeline).

``results`` reads each trace the way ``ec.trace`` does (through the host's
worker when only that worker reaches the host) and writes it to
``DIR/<exp_id>/<run_id>/<guid>-<rtype>.<trace>``.  ``plot`` draws a Gantt
chart of every RM's states from their Redis-clock timestamps, one bar per
state interval, failures marked; PNG, SVG or PDF by the file's suffix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nepi_dist.cli.common import RedisUrl, connect, console, fail, resolve_run
from nepi_dist.cli.runs import ExpArg, RunArg
from nepi_dist.engine.report import Row, rows
from nepi_dist.model.state import ResourceState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A state's colour in the timeline.
COLOURS = {ResourceState.NEW: "#dddddd", ResourceState.DISCOVERED: "#c6dbef", ResourceState.PROVISIONED: "#9ecae1",
           ResourceState.READY: "#6baed6", ResourceState.STARTED: "#31a354", ResourceState.STOPPED: "#fdae6b",
           ResourceState.FINISHED: "#74c476", ResourceState.FAILED: "#de2d26", ResourceState.RELEASED: "#969696"}


def results(
    exp_id: ExpArg,
    run_id: RunArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The results folder.")] = Path("results"),
    redis_url: RedisUrl = None,
) -> None:
    """Write every enabled trace of a run to DIR/<exp_id>/<run_id>/<guid>-<rtype>.<trace>."""
    from nepi_dist.engine.celery_app import create_app
    from nepi_dist.engine.context import RunContext
    from nepi_dist.engine.startup import load_resource_types, modules_from_env
    from nepi_dist.errors import NepiError
    from nepi_dist.model.resource import ResourceFactory

    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    load_resource_types(modules_from_env())
    folder = output / store.exp_id / store.run_id
    folder.mkdir(parents=True, exist_ok=True)
    app = create_app(redis_url)
    ctx = RunContext(store, app, ResourceFactory)
    written, failed = [], []
    try:
        for row in rows(store):
            traces = sorted(k[3:] for k in client.hkeys(store.keys.rm(row.guid)) if k.startswith("tr:"))
            for trace in traces:
                name = f"{row.guid}-{row.rtype.replace('::', '-')}.{trace}"
                try:
                    data = ctx.trace(row.guid, trace)
                except NepiError as exc:
                    failed.append(f"{name}: {exc}")
                    continue
                path = folder / name
                path.write_bytes(data if isinstance(data, bytes) else str(data or "").encode())
                written.append(path.name)
    finally:
        app.close()
    console.print(f"{len(written)} traces in {folder}: {', '.join(written) or '-'}")
    for line in failed:
        console.print(f"[red]not read[/] {line}", markup=True)
    if failed:
        raise typer.Exit(1)


def intervals(row: Row, end: float) -> list[tuple[int, float, float]]:
    """(state, from, to) of every state an RM was in, on the Redis clock; the last lasts until ``end``."""
    stamps = sorted((t, s) for s, t in row.times.items())
    out = []
    for i, (t, s) in enumerate(stamps):
        until = stamps[i + 1][0] if i + 1 < len(stamps) else max(end, t)
        if s == ResourceState.RELEASED:
            until = t  # released: the RM's life is over
        out.append((s, t, until))
    return out


def timeline(found: list[Row], title: str) -> Figure:
    """Draw the Gantt chart of ``found``: one horizontal bar per state interval, FAILED marked with an x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    stamps = [t for r in found for t in r.times.values()]
    t0 = min(stamps) if stamps else 0.0
    end = max(stamps) if stamps else 0.0
    fig = Figure(figsize=(10, max(2.5, 0.35 * len(found) + 1.5)))
    ax = fig.add_subplot()
    for y, row in enumerate(found):
        for state, start, until in intervals(row, end):
            if until > start:
                ax.barh(y, until - start, left=start - t0, height=0.6, color=COLOURS.get(ResourceState(state)),
                        edgecolor="none", gid=f"{row.guid}:{ResourceState(state).name}")
        failed = row.times.get(ResourceState.FAILED)
        if failed is not None:
            ax.plot([failed - t0], [y], marker="x", color="black", markersize=9, gid=f"{row.guid}:failed")
    ax.set_yticks(range(len(found)), [f"{r.guid} {r.rtype}" for r in found], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (Redis clock) since the run's first state change")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=s.name) for s, c in COLOURS.items()],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def graph(found: list[Row], connections: dict[int, set[int]], title: str) -> Figure:
    """Draw the experiment graph: one dot per RM (a column per type, coloured by the state it
    reached), one line per connection."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    columns = {rtype: i for i, rtype in enumerate(dict.fromkeys(r.rtype for r in found))}
    heights: dict[str, int] = {}
    where: dict[int, tuple[float, float]] = {}
    for r in found:
        row = heights[r.rtype] = heights.get(r.rtype, -1) + 1
        where[r.guid] = (float(columns[r.rtype]), -float(row))
    fig = Figure(figsize=(max(4.0, 2.2 * len(columns)), max(3.0, 0.4 * max(heights.values(), default=1) + 2)))
    ax = fig.add_subplot()
    pairs = sorted({(min(a, b), max(a, b)) for a, cs in connections.items() for b in cs if a in where and b in where})
    ax.add_collection(LineCollection([[where[a], where[b]] for a, b in pairs], colors="#888888", linewidths=0.8,
                                     gid="connections"))
    outcome = [max((s for s in r.times if s != ResourceState.RELEASED), default=r.state) for r in found]
    ax.scatter([where[r.guid][0] for r in found], [where[r.guid][1] for r in found], s=120, zorder=3,
               c=[COLOURS.get(ResourceState(s), "#000000") for s in outcome], edgecolors="black", gid="resources")
    for r in found:
        x, y = where[r.guid]
        ax.annotate(str(r.guid), (x, y), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax.set_xticks(range(len(columns)), list(columns), fontsize=8, rotation=20)
    ax.set_yticks([])
    ax.set_title(title)
    ax.margins(0.2)
    fig.tight_layout()
    return fig


def plot(
    exp_id: ExpArg,
    run_id: RunArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The picture: .png, .svg or .pdf.")] = Path(
        "timeline.png"),
    redis_url: RedisUrl = None,
    as_graph: Annotated[bool, typer.Option("--graph", help="Draw the experiment graph instead: one dot per RM "
                                           "(coloured by the state it reached), one line per connection.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Also print what was drawn, as JSON.")] = False,
) -> None:
    """Draw a run's timeline: one bar per RM state interval (Redis-clock timestamps), failures marked."""
    if output.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"{output}: a .png, .svg or .pdf file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail("plot needs matplotlib: pip install 'nepi-dist[plot]'")
    client = connect(redis_url)
    store = resolve_run(client, exp_id, run_id)
    found = rows(store)
    if as_graph:
        guids = [r.guid for r in found]
        connections = dict(zip(guids, store.connections_of_many(guids), strict=True))
        graph(found, connections, f"{store.exp_id}/{store.run_id}").savefig(output)
        pairs = sorted({(min(a, b), max(a, b)) for a, cs in connections.items() for b in cs})
        if json_:
            print(json.dumps({"resources": guids, "connections": pairs}))
        else:
            console.print(f"{len(guids)} RMs and {len(pairs)} connections drawn in {output}")
        return
    fig = timeline(found, f"{store.exp_id}/{store.run_id}")
    fig.savefig(output)
    drawn: list[dict[str, Any]] = []
    stamps = [t for r in found for t in r.times.values()]
    end = max(stamps) if stamps else 0.0
    for r in found:
        drawn += [{"guid": r.guid, "state": ResourceState(s).name, "from": a, "to": b}
                  for s, a, b in intervals(r, end) if b > a]
    if json_:
        print(json.dumps(drawn))
    else:
        console.print(f"{len(drawn)} state intervals of {len(found)} RMs drawn in {output}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("results", help=results.__doc__)(results)
    app.command("plot", help=plot.__doc__)(plot)
