"""Workers: the throughput benchmark with 1, 2 and 4 worker processes, and Redis commands per RM.

    .venv/bin/python -m bench.workers [--counts 1,2,4] [--n 2000] [--concurrency 8]

For each worker count, on a fresh private Redis and that many ``nepi-dist
worker`` processes (threads pool), it runs :func:`bench.throughput.run`: raw
noop tasks, then N trivial RM lifecycles, then raw again.  Besides actions/s
and the ratio to raw Celery it prints where the CPU went (worker processes,
Redis, controller, per action) and the Redis commands per RM from ``INFO
commandstats`` (commands run inside Lua scripts included; EVALSHA is one
client round trip running a script).  ``--redis-ops`` (default 90,000/s, a
typical single-core redis-benchmark figure) gives the ceiling on paper:
actions/s <= ops/s / commands per action.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .common import bench_parser, machine, setup_logging, table, today
from .throughput import ACTIONS_PER_RM, run


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("workers", __doc__, workers=False)
    parser.add_argument("--counts", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--n", type=int, default=2000, help="raw tasks and RMs per run (default 2000)")
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    parser.add_argument("--redis-ops", type=float, default=90_000.0, help="Redis ops/s ceiling for the paper bound")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",") if x.strip()]
    setup_logging()

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for k in counts:
        raw1, nepi, raw2 = run(k, args.concurrency, args.pool, args.n)
        raw_best = max(raw1["tasks_per_s"], raw2["tasks_per_s"])
        cmds = nepi["commands_per_rm"]
        cmds_per_action = sum(cmds.values()) / ACTIONS_PER_RM
        r = {
            "workers": k,
            "raw_tasks_per_s": raw_best,
            "actions_per_s": nepi["actions_per_s"],
            "ratio": nepi["actions_per_s"] / raw_best,
            "msgs_per_rm": nepi["msgs_per_rm"],
            "worker_cpu_ms": nepi["worker_cpu_per_action_ms"],
            "redis_cpu_ms": nepi["redis_cpu_per_action_ms"],
            "ctl_cpu_ms": nepi["ctl_cpu_per_action_ms"],
            "raw_worker_cpu_ms": raw1["worker_cpu_per_task_ms"],
            "raw_redis_cpu_ms": raw1["redis_cpu_per_task_ms"],
            "cmds_per_rm": sum(cmds.values()),
            "evalsha_per_rm": cmds.get("evalsha", 0.0),
            "raw_cmds_per_task": sum(raw1["commands_per_task"].values()),
            "commands_per_rm": {c: round(v, 2) for c, v in cmds.items() if v >= 0.05},
        }
        results.append(r)
        rows.append([
            k, f"{raw_best:.0f}", f"{r['actions_per_s']:.0f}", f"{r['ratio']:.2f}",
            f"{r['worker_cpu_ms']:.2f} / {r['raw_worker_cpu_ms']:.2f}",
            f"{r['redis_cpu_ms']:.3f} / {r['raw_redis_cpu_ms']:.3f}", f"{r['ctl_cpu_ms']:.2f}",
            f"{r['cmds_per_rm']:.1f}", f"{r['evalsha_per_rm']:.1f}", f"{r['raw_cmds_per_task']:.1f}",
            f"{1000 / r['redis_cpu_ms']:.0f}", f"{args.redis_ops / cmds_per_action:.0f}",
        ])
        print(f"{k} worker(s): {r['actions_per_s']:.0f} actions/s, raw {raw_best:.0f} tasks/s, "
              f"ratio {r['ratio']:.2f}", flush=True)

    print(f"\n# workers {today()} — {machine()}")
    print(f"# N = {args.n} trivial RMs ({ACTIONS_PER_RM} actions each), {args.concurrency} {args.pool} per worker, "
          f"{os.cpu_count()} cores; CPU per action: nepi_dist / raw task")
    print(table(
        ["workers", "raw tasks/s", "actions/s", "ratio", "worker CPU ms", "Redis CPU ms", "ctl CPU ms",
         "Redis cmds/RM", "EVALSHA/RM", "raw cmds/task", "Redis-CPU bound actions/s",
         f"{args.redis_ops / 1000:.0f}k ops/s bound"],
        rows,
    ))
    top = results[0]["commands_per_rm"]
    print(f"Redis commands per RM ({results[0]['workers']} worker(s)): "
          + ", ".join(f"{c} {v:.2f}" for c, v in top.items()))
    summary = {"bench": "workers", "date": today(), "n": args.n, "concurrency": args.concurrency,
               "pool": args.pool, "runs": [{k: (round(v, 3) if isinstance(v, float) else v)
                                            for k, v in r.items()} for r in results]}
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
