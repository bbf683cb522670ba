"""Scale: NEPI's test_concurrency shape (one node, N applications, no sleeps) for growing N.

    .venv/bin/python -m bench.scale [--ns 100,1000,3000,10000] [--workers 1] [--concurrency 8]
    .venv/bin/python -m bench.scale --ns 100,1000,3000     # a quicker run

The results are also written as JSON (``--json``, default ``bench/scale.json``)
for ``python -m bench.plot``, which draws ``bench/scale.png``.

For each N, on one private Redis and the same external workers, a fresh
controller registers one ``bench::Node`` and N ``bench::App`` connected to it,
each App's DEPLOY conditioned on the node being READY (NEPI's test App
re-polls the node every 0.1 s instead), then measures from ``ec.deploy()``
until ``ec.wait_finished(apps)`` returns:

* time (wall), and time per RM;
* Celery messages per RM: the delta of Redis ``INFO commandstats``
  ``cmdstat_lpush`` calls (kombu's Redis transport publishes each message
  with one LPUSH; nepi_dist's own scripts never LPUSH), divided by N + 1;
* Redis memory per RM: ``INFO memory`` ``used_memory`` after all finished
  (before shutdown) minus before registering, divided by N + 1; the previous
  run's keys are deleted first;
* controller CPU: ``getrusage(RUSAGE_SELF)`` delta in this process
  (the controller, its failure manager thread included);
* the worker processes' and Redis' CPU, for where the time goes.

The raw Celery floor is measured in the same run (noop tasks through the same
workers) and shown as the time the same number of messages takes raw.

``--workers 1,2`` repeats the whole measurement with 1 and then 2 worker
processes (a fresh cluster each).  ``--nepi SCRIPT`` (or ``NEPI_BENCH_SCRIPT``)
also times NEPI's own controller on the same shape in the same run: SCRIPT is
run as ``python SCRIPT --n N`` and must print ``deploy->finished <s> s``.  NEPI
is not shipped here (this project copies none of it): point SCRIPT at a
Python 3 port of NEPI's ``test_concurrency`` (see bench/README.md).  Without
it, the plot shows the NEPI figures quoted in issue 5.  ``--nepi-ns`` picks the
N to time NEPI at; a NEPI run longer than ``--nepi-timeout`` is killed and
recorded as "> timeout" (negative in the JSON).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nepi_dist import ExperimentController, ResourceAction, ResourceState

from . import rms  # noqa: F401  (registers bench RM types in this process)
from .common import (
    Cluster,
    bench_parser,
    delete_run_keys,
    machine,
    raw_app,
    run_noops,
    self_cpu,
    setup_logging,
    table,
    today,
)

#: The issue's N list; pass a shorter --ns for a quick run (N = 10,000 alone takes minutes here).
DEFAULT_NS = (100, 1000, 3000, 10000)


def run_shape(cluster: Cluster, n: int, timeout: float) -> dict[str, Any]:
    mem0 = cluster.used_memory()
    cpu0, t0 = self_cpu(), time.perf_counter()
    ec = ExperimentController(redis_url=cluster.url)
    try:
        node = ec.register_resource("bench::Node")
        apps = [ec.register_resource("bench::App") for _ in range(n)]
        for app in apps:
            ec.register_connection(app, node)
        ec.register_condition(apps, ResourceAction.DEPLOY, node, ResourceState.READY)
        describe_s, describe_cpu = time.perf_counter() - t0, self_cpu() - cpu0

        before = cluster.snapshot()
        ec.deploy()
        ec.wait_finished(apps, timeout=timeout)
        d = cluster.delta(before)

        mem = cluster.used_memory() - mem0
        states = ec._store.states(apps)
        unfinished = sum(1 for s in states if s is None or s < ResourceState.STOPPED)
        if unfinished or ec.abort or ec.state(node) != ResourceState.STARTED:
            raise RuntimeError(f"N={n}: {unfinished} apps unfinished, abort={ec.abort}")
        t1 = time.perf_counter()
    finally:
        ec.shutdown()
    release_s = time.perf_counter() - t1
    delete_run_keys(cluster.client, ec._store.keys.pattern())
    rms_n = n + 1
    return {
        "n": n,
        "describe_s": describe_s,
        "describe_cpu_s": describe_cpu,
        "seconds": d["wall"],
        "ms_per_rm": 1000 * d["wall"] / rms_n,
        "msgs": d["lpush"],
        "msgs_per_rm": d["lpush"] / rms_n,
        "mem_per_rm": mem / rms_n,
        "ctl_cpu_s": d["ctl_cpu"],
        "worker_cpu_s": d["worker_cpu"],
        "redis_cpu_s": d["redis_cpu"],
        "redis_cmds_per_rm": d["cmds"] / rms_n,
        "release_s": release_s,
    }


def run_nepi(script: str, n: int, timeout: float) -> float | None:
    """Time NEPI's controller on the same shape: run ``python SCRIPT --n N``; its deploy->finished s.

    None when it did not finish within ``timeout`` seconds (it is killed).
    """
    try:
        out = subprocess.run(
            [sys.executable, script, "--n", str(n)], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    found = re.search(r"deploy->finished ([0-9.]+) s", out)
    if found is None:
        raise RuntimeError(f"{script} --n {n} printed no 'deploy->finished <s> s': {out[-500:]!r}")
    return float(found.group(1))


def measure(workers: int, concurrency: int, ns: list[int], raw_n: int, timeout: float) -> dict[str, Any]:
    """On a fresh cluster of ``workers`` processes: raw floor, then the shape for every N, then raw again."""
    results: list[dict[str, Any]] = []
    with Cluster(workers, concurrency) as cluster:
        run_noops(raw_app(cluster.url), cluster.client, 200)  # warm-up
        run_shape(cluster, 20, timeout)
        raw_rate = raw_n / run_noops(raw_app(cluster.url), cluster.client, raw_n)
        for n in ns:
            r = run_shape(cluster, n, timeout)
            r["raw_floor_s"] = r["msgs"] / raw_rate
            results.append(r)
            print(f"{workers} worker(s), N={n}: {r['seconds']:.2f} s, {r['msgs_per_rm']:.2f} msgs/RM, "
                  f"{r['mem_per_rm']:.0f} B/RM, controller CPU {r['ctl_cpu_s']:.2f} s", flush=True)
        raw_after = raw_n / run_noops(raw_app(cluster.url), cluster.client, raw_n)
    return {
        "workers": workers,
        "concurrency": concurrency,
        "raw_tasks_per_s": round(raw_rate, 1),
        "raw_tasks_per_s_after": round(raw_after, 1),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results],
    }


def report(config: dict[str, Any], nepi: dict[int, float]) -> str:
    """The Markdown table of one worker configuration."""
    results = config["runs"]
    by_n = {r["n"]: r for r in results}
    rows = []
    for i, r in enumerate(results):
        tenth = by_n.get(r["n"] // 10) if r["n"] % 10 == 0 else None
        growth = f"{r['seconds'] / tenth['seconds']:.1f}" if tenth else "-"
        prev = results[i - 1] if i else None
        step = f"{r['seconds'] / prev['seconds']:.1f} for x{r['n'] / prev['n']:.3g}" if prev else "-"
        t = nepi.get(r["n"])
        vs_nepi = "-" if t is None else (f"{t:.2f} ({t / r['seconds']:.1f}x)" if t > 0 else
                                         f"> {-t:.0f} (> {-t / r['seconds']:.0f}x)")
        rows.append([
            r["n"], f"{r['seconds']:.2f}", f"{r['ms_per_rm']:.2f}", growth, step,
            f"{r['raw_floor_s']:.2f}", f"{r['seconds'] / r['raw_floor_s']:.1f}", vs_nepi,
            f"{r['msgs_per_rm']:.2f}", f"{r['mem_per_rm']:.0f}",
            f"{r['ctl_cpu_s']:.2f}", f"{r['worker_cpu_s']:.2f}", f"{r['redis_cpu_s']:.2f}",
            f"{r['describe_s']:.2f}", f"{r['release_s']:.2f}",
        ])
    head = (f"# {config['workers']} worker process(es) x {config['concurrency']} threads; raw Celery noop "
            f"{config['raw_tasks_per_s']:.0f} tasks/s before, {config['raw_tasks_per_s_after']:.0f} after")
    return head + "\n" + table(
        ["N apps", "deploy→finished s", "ms/RM", "t(N)/t(N/10)", "vs previous N", "raw floor s",
         "x raw floor", "NEPI s (NEPI ÷ nepi_dist)", "msgs/RM", "Redis B/RM", "ctl CPU s",
         "worker CPU s", "Redis CPU s", "describe s", "release s"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("scale", __doc__, workers=False, timeout=900.0)
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)),
                        help=f"comma-separated N (default {','.join(map(str, DEFAULT_NS))})")
    parser.add_argument("--workers", default="1", help="comma-separated worker process counts (default 1)")
    parser.add_argument("--raw-n", type=int, default=2000, help="raw noop tasks for the baseline (default 2000)")
    parser.add_argument("--nepi", default=os.environ.get("NEPI_BENCH_SCRIPT", ""),
                        help="a script timing NEPI's controller on this shape (default $NEPI_BENCH_SCRIPT)")
    parser.add_argument("--nepi-ns", default="", help="the N to time NEPI at (default: --ns)")
    parser.add_argument("--nepi-timeout", type=float, default=600.0,
                        help="give NEPI this many seconds per N, then record it as slower (default 600)")
    parser.add_argument("--json", default=str(Path(__file__).with_name("scale.json")),
                        help="write the summary here (default bench/scale.json; '' to skip)")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.ns.split(",") if x.strip()]
    setup_logging()

    configs = [measure(int(w), args.concurrency, ns, args.raw_n, args.timeout) for w in args.workers.split(",")]
    nepi: dict[int, float] = {}  # N -> seconds; -timeout when it did not finish in time
    if args.nepi:
        for n in [int(x) for x in (args.nepi_ns or args.ns).split(",") if x.strip()]:
            took = run_nepi(args.nepi, n, args.nepi_timeout)
            nepi[n] = -args.nepi_timeout if took is None else took
            print(f"NEPI's controller, N={n}: " + (f"{took:.2f} s" if took is not None else
                  f"not finished after {args.nepi_timeout:.0f} s"), flush=True)

    print(f"\n# scale {today()} — {machine()}")
    for config in configs:
        print(report(config, nepi))
    summary = {
        "bench": "scale",
        "date": today(),
        "configs": configs,
        "nepi_measured": {str(n): round(t, 3) for n, t in nepi.items()},
    }
    print("SUMMARY " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
