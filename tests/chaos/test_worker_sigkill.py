"""Chaos 1: a worker SIGKILLed mid-run and restarted, five runs over.

Two workers serve 300 ChaosSteps whose starts are spread over 3 s after an
anchor's; during the spread one worker is SIGKILLed (some starts are then
between their ``set_started()`` and ``set_finished()``, others wait in its
memory as ETA messages) and restarted at once.  Its messages come back after
the visibility timeout, so an action may run up to :data:`REDELIVERY`
seconds after the restart.  Every RM must end FINISHED, every start and
finish take effect exactly once.
"""

from __future__ import annotations

import random

import pytest

from .harness import REDELIVERY, Cluster, Scenario

N = 300
ITERATIONS = 5
SPREAD = 3.0


@pytest.mark.timeout(280)
def test_a_worker_killed_mid_run_and_restarted_loses_no_action_runs_none_twice_and_leaves_none_started(
    cluster: Cluster, scenario: Scenario
) -> None:
    cluster.start(workers=2)
    rng = random.Random(9)
    for i in range(ITERATIONS):
        run = scenario.run(f"chaos-worker-kill-{i}", N, 0.0, SPREAD, seed=i, name=f"run {i}")
        run.deploy()
        victim = cluster.workers[i % len(cluster.workers)]
        offset = rng.uniform(0.8, SPREAD - 0.8)
        began, restarted = run.inject(offset, victim.restart)  # SIGKILLed, then started again at once
        run.wait_finished(restarted, REDELIVERY)

        out = run.outcome(REDELIVERY, fault=(began, restarted))
        runs = sum(1 for e in out.entries if e.kind == "run")
        print(f"\n  run {i}: {victim.name} SIGKILLed {offset:.2f}s after the anchor started and restarted; "
              f"{out.counts(recovery=True)} start bodies run={runs} final states={dict(out.states)}", flush=True)
        run.judge(out)
        scenario.end_run(run, out.fig)
    problems = scenario.end("worker-sigkill", tolerance_s=REDELIVERY)
    assert not problems, "\n".join(problems)
