"""`make run`: pings between local addresses, their outputs gathered by a Collector.

A linux::Node on localhost runs three linux::Ping applications (to 127.0.0.1,
127.0.0.2 and 127.0.0.3, all on this machine's loopback), the third starting one
second after the first finished.  A Collector pulls every ping's stdout into
./results/<exp_id>/<run_id>/ when the run is released.
"""

from __future__ import annotations

import os
import sys
import time

from nepi_dist import ExperimentController, FailureLevel, ResourceAction, ResourceState, ResourceState2str

LEVELS = {FailureLevel.OK: "OK", FailureLevel.RM_FAILURE: "RM_FAILURE", FailureLevel.EC_FAILURE: "EC_FAILURE"}


def main() -> int:
    began = time.monotonic()
    ec = ExperimentController(exp_id="ping-collect")
    print(f"run {ec.exp_id}/{ec.run_id} (Redis {ec.redis_url})")
    node = ec.register_resource("linux::Node")
    pings = []
    for target in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        ping = ec.register_resource("linux::Ping")
        ec.set(ping, "target", target)
        ec.set(ping, "count", 3)
        ec.set(ping, "interval", 0.2)
        ec.register_connection(ping, node)
        pings.append(ping)
    ec.register_condition(pings[2], ResourceAction.START, pings[0], ResourceState.FINISHED, "1s")
    collector = ec.register_resource("Collector")
    ec.set(collector, "traceName", "stdout")
    ec.set(collector, "resultsDir", os.path.abspath("results"))
    for ping in pings:
        ec.register_connection(collector, ping)

    ec.deploy()
    ec.wait_finished(pings, timeout=120)
    starts = [ec.get_resource(p).start_time for p in pings]
    first = min((t for t in starts if t), default=0.0)  # the first ping to start, on the Redis clock
    for ping, start in zip(pings, starts, strict=True):
        summary = (ec.trace(ping, "stdout") or "").strip().splitlines()[-2:]
        started = f"started {start - first:.3f}s after the first" if start else "never started"
        print(f"  ping {ec.get(ping, 'target')}: {ResourceState2str[ec.state(ping)]}, "
              f"{started}; {' | '.join(summary)}")
    gap = ec.get_resource(pings[2]).start_time - ec.get_resource(pings[0]).finish_time
    print(f"third ping started {gap:.3f}s after the first finished (condition: 1s)")
    ec.shutdown()
    results = os.path.join(os.path.abspath("results"), ec.exp_id, ec.run_id)
    files = sorted(os.listdir(results)) if os.path.isdir(results) else []
    print(f"results in {results}: {', '.join(files)}")
    print(f"done in {time.monotonic() - began:.2f}s, failure level {LEVELS.get(ec.failure_level, ec.failure_level)}")
    ok = all(ec.state(p) == ResourceState.RELEASED for p in pings) and len(files) == len(pings)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
