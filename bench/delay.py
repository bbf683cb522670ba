"""Delay precision: RMs started with condition delays vs raw Celery ETA tasks, same run.

    .venv/bin/python -m bench.delay [--n 1000] [--min-delay 1] [--max-delay 5] [--workers 1]

nepi_dist: one anchor ``bench::Node`` and N ``bench::Node`` RMs, RM i with
``register_condition(i, START, anchor, STARTED, time=d_i)``, the delays d_i
spread evenly over [min, max] seconds.  The N RMs are deployed first and the
benchmark waits until each one's ``start_with_conditions`` is parked on the
anchor; then the anchor is deployed and started.  Its STARTED transition wakes
the N parked actions, each due at t4(anchor) + d_i (the delay it was parked
with), and they are published with that ETA; when one runs it finds its
condition met and starts the RM.  Lateness = t4(i) - (t4(anchor) + d_i), all on
Redis' clock.

Also printed: when the *wake-up wave* ended (no woken action left scored at
the anchor's start time in the run's pending set: before the delay-aware
wake-up, each woken action had to run once only to re-publish itself with its
ETA), the lateness of the RMs whose delay outlasted that wave, and lateness per
band of delay.

Raw Celery: N ``bench.stamp`` tasks published by one producer with
``eta = now + d_i`` (same delays); lateness = when the body ran - eta.  Run
before and after nepi_dist; the target uses the lower raw p99.
Target: nepi_dist p99 <= raw p99 + 10 ms.
"""

from __future__ import annotations

import json
import os
import time

from nepi_dist import ExperimentController, ResourceAction, ResourceState

from . import rms  # noqa: F401  (registers bench RM types in this process)
from .common import (
    Cluster,
    bench_parser,
    delete_run_keys,
    fmt_q,
    machine,
    publish_stamps,
    quantiles,
    raw_app,
    setup_logging,
    stamps,
    table,
    today,
    wait_for,
    wait_list,
)

STARTED = int(ResourceState.STARTED)


def spread(n: int, lo: float, hi: float) -> list[float]:
    """``n`` delays evenly spread over [lo, hi] seconds."""
    return [lo + (hi - lo) * i / max(1, n - 1) for i in range(n)]


def raw_lateness(cluster: Cluster, delays: list[float], timeout: float) -> list[float]:
    """Publish one ETA task per delay; return lateness (s) = body ran - eta."""
    key = f"bench:eta:{os.urandom(6).hex()}"
    now = time.time()
    publish_stamps(raw_app(cluster.url), key, [now + d for d in delays])
    runs = stamps(wait_list(cluster.client, key, len(delays), timeout))
    cluster.client.delete(key)
    return [ran - due for ran, due in runs]


def nepi_lateness(cluster: Cluster, delays: list[float], timeout: float) -> tuple[float, list[float]]:
    """Start RMs ``delays`` after an anchor STARTED; return (wake-up wave length, lateness in guid order), s."""
    ec = ExperimentController(redis_url=cluster.url)
    try:
        anchor = ec.register_resource("bench::Node")
        guids = [ec.register_resource("bench::Node") for _ in delays]
        for g, d in zip(guids, delays, strict=True):
            ec.register_condition(g, ResourceAction.START, anchor, ResourceState.STARTED, time=f"{d * 1000:.3f}ms")
        ec.deploy(guids)
        wait_key = ec._store.keys.wait(anchor)
        wait_for(lambda: cluster.client.zcard(wait_key) == len(guids), timeout, poll=0.1,
                 what="every start parked on the anchor")
        ec.deploy([anchor])
        wave_end = wake_up_wave(cluster, ec, anchor, len(guids), timeout)
        ec.wait_started(guids, timeout=timeout)
        if ec.abort:
            raise RuntimeError("the run aborted")
        t0 = float(ec.get_resource(anchor).start_time or "nan")
        starts = [float(t or "nan") for t in ec._store.field_of_many(guids, f"t{STARTED}")]
    finally:
        ec.shutdown()
    delete_run_keys(cluster.client, ec._store.keys.pattern())
    return wave_end - t0, [s - (t0 + d) for s, d in zip(starts, delays, strict=True)]


def wake_up_wave(cluster: Cluster, ec: ExperimentController, anchor: int, n: int, timeout: float) -> float:
    """Return when no woken action was left due at the anchor's start (epoch s).

    The anchor's STARTED transition puts the N woken actions in the run's
    pending set scored with their due time, t4(anchor) + d_i, so the wave is
    over at once.  (Before that, each was scored t4(anchor) and had to run
    once to re-publish itself with its due time.)  Polled every 5 ms.
    """
    keys = ec._store.keys
    rm = ec.get_resource(anchor)

    def over() -> bool:
        t0 = rm.start_time
        if t0 is None or cluster.client.zcard(keys.wait(anchor)):
            return False
        return int(cluster.client.zcount(keys.pending, "-inf", t0 + 0.0005)) == 0

    return wait_for(over, timeout, poll=0.005, what="the wake-up wave")


def by_band(delays: list[float], late: list[float], bands: int = 4) -> list[list[str]]:
    """Lateness quantiles per band of delay (shows queueing behind the wake-up wave)."""
    lo, hi = min(delays), max(delays)
    width = (hi - lo) / bands or 1.0
    rows = []
    for b in range(bands):
        a, z = lo + b * width, lo + (b + 1) * width
        q = quantiles([x for d, x in zip(delays, late, strict=True) if a <= d < z or (b == bands - 1 and d == z)])
        if q["n"]:
            rows.append([f"{a:.3g}-{z:.3g} s", str(q["n"]), f"{q['p50']:.2f}", f"{q['p99']:.2f}", f"{q['max']:.2f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("delay", __doc__, timeout=600.0)
    parser.add_argument("--n", type=int, default=1000, help="delayed RMs and raw ETA tasks (default 1000)")
    parser.add_argument("--min-delay", type=float, default=1.0, help="shortest delay, s (default 1)")
    parser.add_argument("--max-delay", type=float, default=5.0, help="longest delay, s (default 5)")
    args = parser.parse_args(argv)
    setup_logging()
    delays = spread(args.n, args.min_delay, args.max_delay)

    with Cluster(args.workers, args.concurrency) as cluster:
        raw_lateness(cluster, spread(50, 0.1, 0.5), args.timeout)  # warm-up
        nepi_lateness(cluster, spread(20, 0.1, 0.5), args.timeout)
        raw1 = quantiles(raw_lateness(cluster, delays, args.timeout))
        wave, late = nepi_lateness(cluster, delays, args.timeout)
        nepi = quantiles(late)
        in_time = quantiles([x for d, x in zip(delays, late, strict=True) if d > wave])
        raw2 = quantiles(raw_lateness(cluster, delays, args.timeout))

    raw_p99 = min(raw1["p99"], raw2["p99"])
    excess = nepi["p99"] - raw_p99
    print(f"# delay {today()} — {machine()}")
    print(f"# {args.workers} worker process(es) x {args.concurrency} threads, N = {args.n}, "
          f"delays {args.min_delay:g}-{args.max_delay:g} s")
    print(f"raw Celery ETA lateness (before): {fmt_q(raw1)}")
    print(f"raw Celery ETA lateness (after):  {fmt_q(raw2)}")
    print(f"nepi_dist condition-delay lateness: {fmt_q(nepi)}; min {1000 * min(late):.2f} ms")
    print(f"  the wake-up wave (until every woken action was pending with its due time) ended "
          f"{1000 * wave:.0f} ms after the anchor started;")
    print(f"  RMs whose delay outlasted it: {fmt_q(in_time)}")
    print(table(["delay", "RMs", "p50 ms", "p99 ms", "max ms"], by_band(delays, late)))
    print(f"p99 excess nepi - raw (lower raw p99): {excess:.2f} ms   (target <= 10 ms): "
          f"{'met' if excess <= 10 else 'MISSED'}")
    summary = {
        "bench": "delay", "date": today(), "n": args.n, "delays_s": [args.min_delay, args.max_delay],
        "workers": args.workers, "concurrency": args.concurrency,
        "raw_before_ms": {k: round(v, 3) for k, v in raw1.items()},
        "raw_after_ms": {k: round(v, 3) for k, v in raw2.items()},
        "nepi_ms": {k: round(v, 3) for k, v in nepi.items()},
        "p99_excess_ms": round(excess, 3),
        "wave_ms": round(1000 * wave, 1),
        "in_time_ms": {k: round(v, 3) for k, v in in_time.items()},
    }
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
