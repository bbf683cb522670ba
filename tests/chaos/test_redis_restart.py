"""Chaos 2: Redis SIGKILLed mid-run and restarted from its append-only file 2 s later, three runs over.

Two workers serve 300 ChaosSteps whose starts are spread over 3 s after an
anchor's; during the spread Redis is SIGKILLed and, 2 s later, started again
on the same port from its AOF (``appendfsync everysec``).  The workers must
survive (still running, answering a ping), every start and finish take
effect exactly once (within :data:`REDELIVERY` s of Redis being back), and
the controller's ``wait_finished`` raise nothing but nepi_dist's own errors.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from .harness import REDELIVERY, Cluster, Scenario, ride_out_redis_fault

N = 300
ITERATIONS = 3
SPREAD = 3.0
DOWN = 2.0


@pytest.mark.timeout(240)
def test_a_redis_killed_and_restarted_from_its_aof_loses_no_action_runs_none_twice_and_its_workers_survive(
    cluster: Cluster, scenario: Scenario
) -> None:
    cluster.start(workers=2)
    rng = random.Random(2)
    raw_total: Counter[str] = Counter()
    deaths_total = 0
    for i in range(ITERATIONS):
        run = scenario.run(f"chaos-redis-kill-{i}", N, 0.0, SPREAD, seed=100 + i, name=f"run {i}")
        offset = rng.uniform(1.0, 2.0)
        ridden = ride_out_redis_fault(run, offset, cluster.redis.kill, DOWN, cluster.redis.start,
                                      f"Redis SIGKILLed {offset:.2f}s after the anchor started, back {DOWN:g}s later")
        raw_total.update(ridden.waiter.raw)
        deaths_total += len(ridden.dead)
    problems = scenario.end("redis-sigkill-aof-restart", tolerance_s=REDELIVERY, worker_deaths=deaths_total,
                            raw_errors=sum(raw_total.values()))
    assert not problems, "\n".join(problems)
