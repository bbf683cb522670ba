"""Chaos 6: a worker started before its Redis exists waits, then serves once Redis comes up.

The worker process starts on a port where nothing listens yet; 5 s later it
must still be running.  Then Redis starts on that port: within
:data:`SERVE_WITHIN` s the worker must answer a ping, and a run of 50
ChaosSteps (starts spread over 2 s) must take effect once each, on time
within :data:`ON_TIME` s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .harness import (
    ON_TIME,
    Cluster,
    build_spread,
    expected_actions,
    failure_messages,
    figures,
    final_states,
    report,
    wait_for_workers,
)

N = 50
BEFORE = 5.0
SERVE_WITHIN = 30.0


@pytest.mark.timeout(120)
def test_a_worker_started_before_its_redis_waits_and_serves_once_redis_is_up(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    worker = cluster.add_worker()
    time.sleep(BEFORE)
    problems: list[str] = []
    if not worker.alive:
        problems.append(f"the worker exited while Redis was not up yet (code {worker.returncode}): "
                        f"{worker.errors(1)}")
        worker.start()  # to see whether it serves at all once Redis is there
    cluster.redis.start()
    try:
        serving = wait_for_workers(cluster.url, 1, timeout=SERVE_WITHIN)
    except RuntimeError as exc:
        serving = float("inf")
        problems.append(f"the worker did not serve within {SERVE_WITHIN:g}s of Redis coming up: {exc}")

    ec = cluster.controller("chaos-worker-first")
    spread = build_spread(ec, N, 0.0, 2.0, seed=6)
    ledger = cluster.ledger(ec.exp_id, ec.run_id)
    ec.deploy()
    ledger.wait_for(spread.finish_keys(), time.monotonic() + 20)
    client = cluster.redis.client()
    states = final_states(client, ec.exp_id, ec.run_id, spread.guids)
    entries = ledger.read()
    fig = figures(entries, expected_actions(spread, client, entries), ON_TIME, died=cluster.deaths())
    print(f"\n  worker started {BEFORE:g}s before Redis; it answered {serving:.2f}s after Redis came up; "
          f"lost={len(fig.lost)} duplicated={len(fig.duplicated)} late={len(fig.late)} "
          f"final states={dict(states)}", flush=True)
    problems += fig.problems()
    if states != {"FINISHED": len(spread.guids)}:
        problems.append(f"not every RM ended FINISHED: {dict(states)}"
                        + (f"; FAILED with {failure_messages(client, ec.exp_id, ec.run_id, spread.guids)}"
                           if states.get("FAILED") else ""))
    client.close()
    problems += [f"ec.shutdown() raised {e}" for e in cluster.release(ec)]
    report("worker-before-redis", fig, record_property, tolerance_s=ON_TIME, serving_after_s=round(serving, 2))
    assert not problems, "\n".join(problems)
