"""Abort: N pending actions, one critical failure; how fast the run goes quiet, and what still ran.

    .venv/bin/python -m bench.abort [--n 10000] [--window 5] [--fail-at 1] [--workers 1]

nepi_dist: one ``bench::Probe`` RM and N of its ``probe`` actions scheduled
with ``ec.schedule`` (each a Celery task with an ETA), due evenly over a window
of ``--window`` seconds; each one that runs records when its body ran.  A
``bench::Critical`` RM's ``crash`` action is scheduled ``--fail-at`` seconds
into the window: it fails the RM, and the FAILED transition (one Lua script)
raises the run's failure level and rings the failure manager's alarm.  The
*abort mark* is that transition's Redis timestamp (``t7``).  From then on the
claim script refuses every action of the run (``skip:aborted``), and the
failure manager drops the pending set and revokes the Celery tasks.

Measured: actions *claimed* after the mark (target: none), counted in Redis'
own order: the benchmark subscribes to the keyspace events of the run's
``running`` hash (a claim is an HSET there) and of its ``alarm`` list (the
FAILED transition's RPUSH), and counts the claims published after the alarm.
Also: probe bodies that ran before / after the mark (a body after it belongs
to an action claimed before it, still in a worker thread), quiescent = last
probe body after the mark (0 when none ran after it; target <= 1 s), when the
pending set was emptied (polled every 2 ms), and when the worker had disposed
of every message (queue and unacked empty).

Raw Celery baseline, same run: N ``bench.stamp`` ETA tasks over the same
window, and at ``--fail-at`` the benchmark revokes all of them with
``app.control.revoke`` (the mark is just before that call): Celery's own
revoke, to compare with.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import Any

import redis

from nepi_dist import ExperimentController
from nepi_dist.engine.routing import POOL_QUEUE

from .common import (
    Cluster,
    bench_parser,
    delete_run_keys,
    machine,
    publish_stamps,
    quantiles,
    raw_app,
    setup_logging,
    stamps,
    today,
)
from .rms import Critical, Probe, probe_key


def resident_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def held(cluster: Cluster) -> int:
    """Messages still queued or held unacknowledged by a worker (kombu's ``unacked`` hash)."""
    return int(cluster.client.llen(POOL_QUEUE)) + int(cluster.client.hlen("unacked"))


class ClaimWatch:
    """Counts the claims of a run that Redis executed after its critical failure, in Redis' order.

    Keyspace events reach one subscriber in the order Redis executed the
    commands: a claim is an HSET on the run's ``running`` hash (``finish`` is
    an HDEL), and the FAILED transition of a critical RM pushes on the run's
    ``alarm`` list in the same script that raises the failure level.
    """

    def __init__(self, client: redis.Redis, running: str, alarm: str) -> None:
        self._client = client
        self._channels = {f"__keyspace@0__:{running}": "running", f"__keyspace@0__:{alarm}": "alarm"}
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self.claims_before = 0
        self.claims_after = 0
        self._alarmed = False
        self._thread = threading.Thread(target=self._listen, name="claim-watch", daemon=True)

    def start(self) -> ClaimWatch:
        self._client.config_set("notify-keyspace-events", "Khl")
        self._pubsub.subscribe(*self._channels)
        self._thread.start()
        return self

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            key, event = self._channels[message["channel"]], message["data"]
            if key == "alarm" and event == "rpush":
                self._alarmed = True
            elif key == "running" and event == "hset":
                if self._alarmed:
                    self.claims_after += 1
                else:
                    self.claims_before += 1

    def stop(self) -> None:
        time.sleep(0.2)  # let the last events in
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.config_set("notify-keyspace-events", "")


def drain(cluster: Cluster, mark: float, window: float, fail_at: float, grace: float) -> dict[str, Any]:
    """Wait until the worker disposed of every message, or until ``grace`` s after the window's end."""
    deadline = mark + (window - fail_at) + grace
    while held(cluster) and time.time() < deadline:
        time.sleep(0.05)
    left = held(cluster)
    return {"held_at_end": left, "drained_s": (time.time() - mark) if not left else float("nan")}


def outcome(runs: list[tuple[float, float]], mark: float, extra: dict[str, Any]) -> dict[str, Any]:
    after = [ran for ran, _ in runs if ran > mark]
    late = quantiles([ran - due for ran, due in runs if ran <= mark])
    return {
        "before_late_p50_ms": late["p50"],
        "before_late_p99_ms": late["p99"],
        "ran_before": len(runs) - len(after),
        "ran_after": len(after),
        "quiescent_ms": 1000 * (max(after) - mark) if after else 0.0,
        **extra,
    }


def raw_abort(cluster: Cluster, n: int, window: float, fail_at: float, lead: float, grace: float) -> dict[str, Any]:
    app = raw_app(cluster.url)
    key = f"bench:abort:{os.urandom(6).hex()}"
    base = time.time() + lead
    ids = publish_stamps(app, key, [base + window * i / n for i in range(n)])
    published = time.time()
    time.sleep(max(0.0, base + fail_at - time.time()))
    mark = time.time()
    app.control.revoke(ids)
    revoked_ms = 1000 * (time.time() - mark)
    drained = drain(cluster, mark, window, fail_at, grace)
    runs = stamps(list(cluster.client.lrange(key, 0, -1)))
    cluster.client.delete(key)
    return outcome(runs, mark, {"publish_s": published - (base - lead), "late_publish": published > base,
                                "revoke_call_ms": revoked_ms, **drained})


def nepi_abort(
    cluster: Cluster, n: int, window: float, fail_at: float, lead: float, grace: float, timeout: float
) -> dict[str, Any]:
    ec = ExperimentController(redis_url=cluster.url)
    keys = ec._store.keys
    watch = ClaimWatch(cluster.client, keys.running, keys.alarm).start()
    try:
        probe = ec.get_resource(ec.register_resource("bench::Probe"))
        crit = ec.get_resource(ec.register_resource("bench::Critical"))
        assert isinstance(probe, Probe) and isinstance(crit, Critical)
        base = time.time() + lead
        rss0 = resident_bytes()
        for i in range(n):
            due = base + window * i / n
            ec.schedule(f"{max(0.0, due - time.time()):.6f}s", functools.partial(probe.probe, due))
        published = time.time()
        rss_growth = resident_bytes() - rss0  # the controller keeps no record of an untracked action
        ec.schedule(f"{max(0.0, base + fail_at - time.time()):.6f}s", crit.crash)
        # watch the run's pending set from here: when did the failure manager empty it?
        pending_empty = None
        deadline = time.monotonic() + window + timeout
        while pending_empty is None and time.monotonic() < deadline:
            pipe = cluster.client.pipeline(transaction=False)
            pipe.hget(keys.run, "fl")
            pipe.zcard(keys.pending)
            fl, left = pipe.execute()
            if fl != "1" and left == 0:
                pending_empty = time.time()
            else:
                time.sleep(0.002)
        mark = float(crit.failed_time or "nan")
        drained = drain(cluster, mark, window, fail_at, grace)
        running = cluster.client.hlen(keys.running)
        runs = stamps(list(cluster.client.lrange(probe_key(ec.exp_id), 0, -1)))
        if not ec.abort:
            raise RuntimeError("the critical failure did not abort the run")
    finally:
        watch.stop()
        ec.shutdown()
        cluster.client.delete(probe_key(ec.exp_id))
    delete_run_keys(cluster.client, keys.pattern())
    return outcome(runs, mark, {
        "publish_s": published - (base - lead),
        "late_publish": published > base,
        "pending_empty_ms": 1000 * (pending_empty - mark) if pending_empty else float("nan"),
        "running_at_end": running,
        "claimed_before": watch.claims_before,
        "claimed_after": watch.claims_after,
        "ctl_rss_growth_b": rss_growth,
        **drained,
    })


def disposed(r: dict[str, Any]) -> str:
    if r["held_at_end"]:
        return f"the worker still held {r['held_at_end']} revoked messages at the end of the grace period"
    return f"every message disposed of {r['drained_s']:.2f} s after the mark"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("abort", __doc__, timeout=300.0)
    parser.add_argument("--n", type=int, default=10000, help="pending actions (default 10000)")
    parser.add_argument("--window", type=float, default=5.0, help="the actions are due over this many s (default 5)")
    parser.add_argument("--fail-at", type=float, default=1.0, help="the failure, s into the window (default 1)")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="wait at most this long after the window for the worker to dispose of every message")
    args = parser.parse_args(argv)
    setup_logging()

    with Cluster(args.workers, args.concurrency) as cluster:
        # warm-up, which also times publishing to choose how far ahead the window starts
        warm = nepi_abort(cluster, 500, 0.5, 0.25, 2.0, 0.0, args.timeout)
        lead = 2.0 + 1.5 * warm["publish_s"] / 500 * args.n
        cluster.restart_workers()  # each phase starts with workers holding no revoked ETA tasks
        raw = raw_abort(cluster, args.n, args.window, args.fail_at, lead, args.grace)
        cluster.restart_workers()
        nepi = nepi_abort(cluster, args.n, args.window, args.fail_at, lead, args.grace, args.timeout)

    print(f"# abort {today()} — {machine()}")
    print(f"# {args.workers} worker process(es) x {args.concurrency} threads; N = {args.n} actions due over "
          f"{args.window:g} s, failure {args.fail_at:g} s into the window (published {lead:.1f} s ahead)")
    print(f"raw Celery revoke: {raw['ran_before']} ran before the mark, {raw['ran_after']} after "
          f"(last {raw['quiescent_ms']:.1f} ms after; those before ran {raw['before_late_p50_ms']:.0f} / "
          f"{raw['before_late_p99_ms']:.0f} ms late p50/p99); revoke call {raw['revoke_call_ms']:.1f} ms; "
          f"{disposed(raw)}")
    print(f"nepi_dist abort:   {nepi['claimed_after']} actions claimed after the mark "
          f"({nepi['claimed_before']} before, Redis order); bodies: {nepi['ran_before']} ran before the mark, "
          f"{nepi['ran_after']} after (claimed before it; "
          f"last {nepi['quiescent_ms']:.1f} ms after; those before ran {nepi['before_late_p50_ms']:.0f} / "
          f"{nepi['before_late_p99_ms']:.0f} ms late p50/p99); pending set emptied {nepi['pending_empty_ms']:.1f} ms "
          f"after the mark; {disposed(nepi)}; "
          f"{nepi['running_at_end']} actions still marked running; the controller's resident memory grew "
          f"{nepi['ctl_rss_growth_b'] / 1024:.0f} KiB while it scheduled the {args.n} actions")
    ok = nepi["claimed_after"] == 0 and nepi["quiescent_ms"] <= 1000
    print(f"target (quiescent <= 1 s, no action claimed after the mark): {'met' if ok else 'MISSED'}")
    if nepi["late_publish"] or raw["late_publish"]:
        print("warning: publishing overran the window's start; raise the lead (slow machine?)")
    summary = {"bench": "abort", "date": today(), "n": args.n, "window_s": args.window, "fail_at_s": args.fail_at,
               "workers": args.workers, "concurrency": args.concurrency,
               "raw": {k: round(v, 3) if isinstance(v, float) else v for k, v in raw.items()},
               "nepi": {k: round(v, 3) if isinstance(v, float) else v for k, v in nepi.items()}}
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
