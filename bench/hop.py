"""Condition hop: a chain of RMs, each to START when the previous one STARTED, vs raw Celery's chained hop.

    .venv/bin/python -m bench.hop [--n 1000] [--workers 1] [--concurrency 8]

nepi_dist: N ``bench::Node`` RMs, RM i+1 conditioned with
``register_condition(i+1, START, i, STARTED)``.  All but the head are deployed
first and the benchmark waits until each one's ``start_with_conditions`` is
parked on its predecessor; then the head is deployed and the chain runs.  A
hop is ``t4(i+1) - t4(i)``: the STARTED timestamps the transition script takes
from Redis' clock.  One hop costs: the transition wakes the parked action and
the worker publishes it; a worker claims it, checks the condition and starts
the RM (its own transition).

Raw Celery: N ``bench.hop`` tasks, each recording ``time.time()`` then
publishing the next with ``send_task``; a hop is the time between two links.
It runs before and after the nepi_dist chain; the target is taken against the
lower raw p99 of the two.  Target: nepi_dist p99 <= 2 x raw p99.
"""

from __future__ import annotations

import itertools
import json

from nepi_dist import ExperimentController, ResourceAction, ResourceState

from . import rms  # noqa: F401  (registers bench RM types in this process)
from .common import (
    Cluster,
    bench_parser,
    delete_run_keys,
    fmt_q,
    machine,
    quantiles,
    raw_app,
    run_hops,
    setup_logging,
    today,
    wait_for,
)


def nepi_hops(cluster: Cluster, n: int, timeout: float) -> list[float]:
    """Run a chain of ``n`` RMs; return its n-1 hop times (s)."""
    ec = ExperimentController(redis_url=cluster.url)
    try:
        chain = [ec.register_resource("bench::Node") for _ in range(n)]
        for prev, nxt in itertools.pairwise(chain):
            ec.register_condition(nxt, ResourceAction.START, prev, ResourceState.STARTED)
        ec.deploy(chain[1:])
        waits = [ec._store.keys.wait(g) for g in chain[:-1]]

        def all_parked() -> bool:
            pipe = cluster.client.pipeline(transaction=False)
            for key in waits:
                pipe.zcard(key)
            return all(c == 1 for c in pipe.execute())

        wait_for(all_parked, timeout, poll=0.1, what="every start parked on its predecessor")
        ec.deploy([chain[0]])
        ec.wait_started(chain[-1], timeout=timeout)
        starts = [float(t or "nan") for t in ec._store.field_of_many(chain, f"t{int(ResourceState.STARTED)}")]
        if ec.abort:
            raise RuntimeError("the run aborted")
    finally:
        ec.shutdown()
    delete_run_keys(cluster.client, ec._store.keys.pattern())
    return [b - a for a, b in itertools.pairwise(starts)]


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("hop", __doc__, timeout=600.0)
    parser.add_argument("--n", type=int, default=1000, help="RMs in the chain and raw links (default 1000)")
    args = parser.parse_args(argv)
    setup_logging()

    with Cluster(args.workers, args.concurrency) as cluster:
        app = raw_app(cluster.url)
        run_hops(app, cluster.client, 50)  # warm-up
        nepi_hops(cluster, 20, args.timeout)
        raw1 = quantiles(run_hops(app, cluster.client, args.n, args.timeout))
        nepi = quantiles(nepi_hops(cluster, args.n, args.timeout))
        raw2 = quantiles(run_hops(app, cluster.client, args.n, args.timeout))

    raw_p99 = min(raw1["p99"], raw2["p99"])
    ratio = nepi["p99"] / raw_p99
    print(f"# hop {today()} — {machine()}")
    print(f"# {args.workers} worker process(es) x {args.concurrency} threads, chain of N = {args.n}")
    print(f"raw Celery chained hop (before): {fmt_q(raw1)}")
    print(f"raw Celery chained hop (after):  {fmt_q(raw2)}")
    print(f"nepi_dist condition hop:         {fmt_q(nepi)}; mean {nepi['mean']:.2f} ms")
    print(f"p99 ratio nepi / raw (lower raw p99): {ratio:.2f}   (target <= 2): {'met' if ratio <= 2 else 'MISSED'}")
    summary = {
        "bench": "hop", "date": today(), "n": args.n, "workers": args.workers, "concurrency": args.concurrency,
        "raw_before_ms": {k: round(v, 3) for k, v in raw1.items()},
        "raw_after_ms": {k: round(v, 3) for k, v in raw2.items()},
        "nepi_ms": {k: round(v, 3) for k, v in nepi.items()},
        "p99_ratio": round(ratio, 3),
    }
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
