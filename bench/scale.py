"""Scale: NEPI's test_concurrency shape (one node, N applications, no sleeps) for growing N.

    .venv/bin/python -m bench.scale [--ns 100,1000,3000] [--workers 1] [--concurrency 8]
    .venv/bin/python -m bench.scale --ns 100,1000,3000,10000     # the issue's full range, ~8 min

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
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from nepi_dist import ExperimentController, ResourceAction, ResourceState

from . import rms  # noqa: F401  (registers bench RM types in this process)
from .common import Cluster, delete_run_keys, machine, raw_app, run_noops, self_cpu, setup_logging, table, today

#: N = 10,000 is left out of the default run: with one worker process it takes ~4.5 min
#: here (deploy to finished ~200 s, plus describe and release); ask for it with --ns.
DEFAULT_NS = (100, 1000, 3000)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)),
                        help=f"comma-separated N (default {','.join(map(str, DEFAULT_NS))})")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--raw-n", type=int, default=2000, help="raw noop tasks for the baseline (default 2000)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per-N wait timeout, s")
    args = parser.parse_args(argv)
    ns = [int(x) for x in args.ns.split(",") if x.strip()]
    setup_logging()

    results: list[dict[str, Any]] = []
    with Cluster(args.workers, args.concurrency) as cluster:
        run_noops(raw_app(cluster.url), cluster.client, 200)  # warm-up
        run_shape(cluster, 20, args.timeout)
        raw_s = run_noops(raw_app(cluster.url), cluster.client, args.raw_n)
        raw_rate = args.raw_n / raw_s
        for n in ns:
            r = run_shape(cluster, n, args.timeout)
            r["raw_floor_s"] = r["msgs"] / raw_rate
            results.append(r)
            print(f"N={n}: {r['seconds']:.2f} s, {r['msgs_per_rm']:.2f} msgs/RM, "
                  f"{r['mem_per_rm']:.0f} B/RM, controller CPU {r['ctl_cpu_s']:.2f} s", flush=True)
        raw_after = args.raw_n / run_noops(raw_app(cluster.url), cluster.client, args.raw_n)

    by_n = {r["n"]: r for r in results}
    rows = []
    for i, r in enumerate(results):
        tenth = by_n.get(r["n"] // 10) if r["n"] % 10 == 0 else None
        growth = f"{r['seconds'] / tenth['seconds']:.1f}" if tenth else "-"
        prev = results[i - 1] if i else None
        step = f"{r['seconds'] / prev['seconds']:.1f} for x{r['n'] / prev['n']:.3g}" if prev else "-"
        rows.append([
            r["n"], f"{r['seconds']:.2f}", f"{r['ms_per_rm']:.2f}", growth, step,
            f"{r['raw_floor_s']:.2f}", f"{r['seconds'] / r['raw_floor_s']:.1f}",
            f"{r['msgs_per_rm']:.2f}", f"{r['mem_per_rm']:.0f}",
            f"{r['ctl_cpu_s']:.2f}", f"{r['worker_cpu_s']:.2f}", f"{r['redis_cpu_s']:.2f}",
            f"{r['describe_s']:.2f}", f"{r['release_s']:.2f}",
        ])
    print(f"\n# scale {today()} — {machine()}")
    print(f"# {args.workers} worker process(es) x {args.concurrency} threads; raw Celery noop "
          f"{raw_rate:.0f} tasks/s before, {raw_after:.0f} after (same workers)")
    print(table(
        ["N apps", "deploy→finished s", "ms/RM", "t(N)/t(N/10)", "vs previous N", "raw floor s",
         "x raw floor", "msgs/RM", "Redis B/RM", "ctl CPU s", "worker CPU s", "Redis CPU s",
         "describe s", "release s"],
        rows,
    ))
    summary = {
        "bench": "scale",
        "date": today(),
        "workers": args.workers,
        "concurrency": args.concurrency,
        "raw_tasks_per_s": round(raw_rate, 1),
        "raw_tasks_per_s_after": round(raw_after, 1),
        "runs": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in results
        ],
    }
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
