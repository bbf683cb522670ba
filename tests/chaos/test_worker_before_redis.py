"""Chaos 6: a worker started before its Redis exists waits, then serves once Redis comes up.

The worker process starts on a port where nothing listens yet; 5 s later it
must still be running.  Then Redis starts on that port: within
:data:`SERVE_WITHIN` s the worker must answer a ping, and a run of 50
ChaosSteps (starts spread over 2 s) must take effect once each, on time
within :data:`ON_TIME` s.
"""

from __future__ import annotations

import time

import pytest

from .harness import ON_TIME, Cluster, Scenario, wait_for_workers

N = 50
BEFORE = 5.0
SERVE_WITHIN = 30.0


@pytest.mark.timeout(120)
def test_a_worker_started_before_its_redis_waits_and_serves_once_redis_is_up(
    cluster: Cluster, scenario: Scenario
) -> None:
    worker = cluster.add_worker()
    time.sleep(BEFORE)
    if not worker.alive:
        scenario.problem(f"the worker exited while Redis was not up yet (code {worker.returncode}): {worker.errors(1)}")
        worker.start()  # to see whether it serves at all once Redis is there
    cluster.redis.start()
    try:
        serving = wait_for_workers(cluster.url, 1, timeout=SERVE_WITHIN)
    except RuntimeError as exc:
        serving = float("inf")
        scenario.problem(f"the worker did not serve within {SERVE_WITHIN:g}s of Redis coming up: {exc}")

    run = scenario.run("chaos-worker-first", N, 0.0, 2.0, seed=6)
    run.ec.deploy()
    run.ledger.wait_for(run.spread.finish_keys(), time.monotonic() + 20)
    out = run.outcome(ON_TIME)
    print(f"\n  worker started {BEFORE:g}s before Redis; it answered {serving:.2f}s after Redis came up; "
          f"{out.counts()} final states={dict(out.states)}", flush=True)
    run.judge(out)
    scenario.end_run(run, out.fig)
    problems = scenario.end("worker-before-redis", tolerance_s=ON_TIME, serving_after_s=round(serving, 2))
    assert not problems, "\n".join(problems)
