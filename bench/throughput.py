"""Throughput: raw Celery noop tasks vs nepi_dist RM lifecycles, same Redis, same workers, same run.

    .venv/bin/python -m bench.throughput [--n 2000] [--workers 1] [--concurrency 8]

Raw: N ``bench.noop`` tasks published by one producer, timed until the last
one ran.  nepi_dist: N ``bench::Trivial`` RMs (registered beforehand, not
timed) through deploy -> start -> finish, timed from ``ec.deploy()`` until
``ec.wait_finished`` returns.  Each RM costs 3 actions (Celery messages):
``deploy_with_conditions``, ``start_with_conditions`` and ``finish``; the
benchmark also counts the messages actually published (Redis LPUSH calls,
kombu's publish) to check that figure.  The raw run is done before and after
the nepi_dist run; the ratio is taken against the faster of the two (the
conservative choice on a noisy machine).
"""

from __future__ import annotations

import json
import time
from typing import Any

from nepi_dist import ExperimentController

from . import rms  # noqa: F401  (registers bench RM types in this process)
from .common import Cluster, bench_parser, delete_run_keys, machine, raw_app, run_noops, setup_logging, today

ACTIONS_PER_RM = 3  # deploy_with_conditions, start_with_conditions, finish


def measure_raw(cluster: Cluster, n: int) -> dict[str, Any]:
    app = raw_app(cluster.url)
    calls0, before = cluster.command_calls(), cluster.snapshot()
    run_noops(app, cluster.client, n)
    d = cluster.delta(before)
    calls = {k: v - calls0.get(k, 0) for k, v in cluster.command_calls().items()}
    return {
        "n": n,
        "seconds": d["wall"],
        "tasks_per_s": n / d["wall"],
        "msgs": d["lpush"],
        "worker_cpu_per_task_ms": 1000 * d["worker_cpu"] / n,
        "redis_cpu_per_task_ms": 1000 * d["redis_cpu"] / n,
        "ctl_cpu_per_task_ms": 1000 * d["ctl_cpu"] / n,
        "redis_cmds_per_task": d["cmds"] / n,
        "commands_per_task": {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0},
    }


def measure_nepi(cluster: Cluster, n: int) -> dict[str, Any]:
    ec = ExperimentController(redis_url=cluster.url)
    try:
        t0 = time.perf_counter()
        guids = [ec.register_resource("bench::Trivial") for _ in range(n)]
        describe = time.perf_counter() - t0
        calls0, before = cluster.command_calls(), cluster.snapshot()
        ec.deploy()
        ec.wait_finished(guids, timeout=600)
        d = cluster.delta(before)
        calls = {k: v - calls0.get(k, 0) for k, v in cluster.command_calls().items()}
        states = ec._store.states(guids)
        unfinished = sum(1 for s in states if s is None or s < 5)
        if unfinished or ec.abort:
            raise RuntimeError(f"{unfinished} RMs not finished (abort={ec.abort})")
        t1 = time.perf_counter()
    finally:
        ec.shutdown()
    release = time.perf_counter() - t1
    delete_run_keys(cluster.client, ec._store.keys.pattern())
    actions = ACTIONS_PER_RM * n
    return {
        "n": n,
        "describe_s": describe,
        "seconds": d["wall"],
        "rms_per_s": n / d["wall"],
        "actions_per_s": actions / d["wall"],
        "msgs_per_rm": d["lpush"] / n,
        "worker_cpu_per_action_ms": 1000 * d["worker_cpu"] / actions,
        "redis_cpu_per_action_ms": 1000 * d["redis_cpu"] / actions,
        "ctl_cpu_per_action_ms": 1000 * d["ctl_cpu"] / actions,
        "redis_cmds_per_action": d["cmds"] / actions,
        "release_s": release,
        "commands_per_rm": {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0},
    }


def run(workers: int, concurrency: int, pool: str, n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """On a fresh cluster: warm up, then raw, nepi_dist and raw again; return the three measurements."""
    with Cluster(workers, concurrency, pool) as cluster:
        # warm-up: connections, Lua script loading, imports in the workers
        run_noops(raw_app(cluster.url), cluster.client, 200)
        measure_nepi(cluster, 50)

        raw1 = measure_raw(cluster, n)
        nepi = measure_nepi(cluster, n)
        raw2 = measure_raw(cluster, n)
    return raw1, nepi, raw2


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("throughput", __doc__)
    parser.add_argument("--n", type=int, default=2000, help="raw tasks and RMs (default 2000)")
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    args = parser.parse_args(argv)
    setup_logging()

    raw1, nepi, raw2 = run(args.workers, args.concurrency, args.pool, args.n)
    raw_best = max(raw1["tasks_per_s"], raw2["tasks_per_s"])
    ratio = nepi["actions_per_s"] / raw_best
    print(f"# throughput {today()} — {machine()}")
    print(f"# {args.workers} worker process(es) x {args.concurrency} {args.pool}, N = {args.n}")
    print(f"raw Celery noop (before): {raw1['tasks_per_s']:8.0f} tasks/s  ({raw1['seconds']:.2f} s, "
          f"worker CPU {raw1['worker_cpu_per_task_ms']:.3f} ms/task, "
          f"Redis CPU {raw1['redis_cpu_per_task_ms']:.3f} ms/task, "
          f"{raw1['redis_cmds_per_task']:.1f} Redis cmds/task)")
    print(f"raw Celery noop (after):  {raw2['tasks_per_s']:8.0f} tasks/s  ({raw2['seconds']:.2f} s)")
    print(f"nepi_dist trivial RMs:    {nepi['rms_per_s']:8.0f} RM lifecycles/s  ({nepi['seconds']:.2f} s; "
          f"registering took {nepi['describe_s']:.2f} s, release {nepi['release_s']:.2f} s)")
    print(f"nepi_dist actions:        {nepi['actions_per_s']:8.0f} actions/s  "
          f"({ACTIONS_PER_RM} per RM; {nepi['msgs_per_rm']:.2f} messages/RM counted by LPUSH; "
          f"worker CPU {nepi['worker_cpu_per_action_ms']:.3f} ms/action, "
          f"Redis CPU {nepi['redis_cpu_per_action_ms']:.3f} ms/action, "
          f"controller CPU {nepi['ctl_cpu_per_action_ms']:.3f} ms/action, "
          f"{nepi['redis_cmds_per_action']:.1f} Redis cmds/action)")
    print(f"ratio actions/s / raw tasks/s (best raw): {ratio:.2f}   (target >= 0.5)")
    summary: dict[str, Any] = {
        "bench": "throughput",
        "date": today(),
        "n": args.n,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "pool": args.pool,
        "raw_tasks_per_s": round(raw_best, 1),
        "raw_tasks_per_s_before": round(raw1["tasks_per_s"], 1),
        "raw_tasks_per_s_after": round(raw2["tasks_per_s"], 1),
        "rms_per_s": round(nepi["rms_per_s"], 1),
        "actions_per_s": round(nepi["actions_per_s"], 1),
        "msgs_per_rm": round(nepi["msgs_per_rm"], 2),
        "ratio": round(ratio, 3),
    }
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
