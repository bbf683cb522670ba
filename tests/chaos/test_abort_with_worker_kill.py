"""Chaos 5: a critical RM fails while a worker is SIGKILLed at the same moment; twice.

Two workers serve 200 ChaosSteps whose starts are spread over 4 s after an
anchor's, 20 more due 0-10 ms after the moment a ChaosCritical's start,
due 2 s after the anchor's, fails: the run aborts.  At that moment (within 0.1 s) one worker is SIGKILLed and
restarted; the messages it held come back after the visibility timeout,
into an aborted run.  Nothing may start after the failure's Redis timestamp
(the critical RM's ``t7``): no RM's ``t4`` (Redis' own clock, so one order)
is later.  Starts due more than :data:`ON_TIME` s before the failure must
have taken effect, once, except those due after the kill while the failure
itself came only with the redelivery: the killed worker may have held them
and the critical start alike, and they come back together, in a race that
the abort rightly wins.
"""

from __future__ import annotations

import random
import time

import pytest

from nepi_dist import ResourceAction, ResourceState

from .harness import ON_TIME, REDELIVERY, VISIBILITY, Cluster, Due, Scenario, figures, rm_fields

N = 200
SPREAD = 4.0
FAIL_AFTER = 2.0
ITERATIONS = 2
#: ChaosSteps due 0-10 ms after the critical start.
NEAR = 20


@pytest.mark.timeout(150)
def test_nothing_starts_after_a_critical_failure_when_a_worker_is_killed_at_the_same_moment(
    cluster: Cluster, scenario: Scenario
) -> None:
    cluster.start(workers=2)
    rng = random.Random(5)
    after_abort_total = 0
    for i in range(ITERATIONS):
        run = scenario.run(f"chaos-abort-kill-{i}", N, 0.0, SPREAD, seed=300 + i, name=f"run {i}")
        ec, spread = run.ec, run.spread
        for k in range(NEAR):  # due at the failure's moment, 0.5 ms apart: some are claimed as it happens
            g = ec.register_resource("ChaosStep")
            delay = round(FAIL_AFTER + k * 0.0005, 4)
            ec.register_condition(g, ResourceAction.START, spread.anchor, ResourceState.STARTED, f"{delay}s")
            spread.delays[g] = delay
        critical = ec.register_resource("ChaosCritical")
        ec.register_condition(critical, ResourceAction.START, spread.anchor, ResourceState.STARTED,
                              f"{FAIL_AFTER:g}s")
        anchor_t = run.deploy()
        jitter = rng.uniform(-0.1, 0.1)
        victim = cluster.workers[i % len(cluster.workers)]
        killed_at, _ = run.inject(FAIL_AFTER + jitter, victim.restart)  # SIGKILLed, then started again at once
        # Until the killed worker's messages have come back (into the aborted run) and been dealt with.
        time.sleep(VISIBILITY + 4)

        client = cluster.redis.client()
        guids = [*spread.guids, critical]
        t7 = rm_fields(client, ec.exp_id, ec.run_id, [critical], "t7")[0]
        t4s = dict(zip(guids, rm_fields(client, ec.exp_id, ec.run_id, guids, "t4"), strict=True))
        anchor_t4 = float(t4s[spread.anchor] or anchor_t)
        client.close()
        entries = run.ledger.read()
        if t7 is None:
            run.problem("the critical RM never failed (no t7)")
            failed_at = float("inf")
        else:
            failed_at = float(t7)
        after = sorted((g, round(float(t) - failed_at, 4)) for g, t in t4s.items()
                       if t is not None and float(t) > failed_at)
        # Only the starts due well before the failure had to run (the rest may be dropped by the abort);
        # one due after the kill (or in flight at it) comes back only at the redelivery,
        # and had to run only if that beat the failure.
        redelivered_in_time = killed_at + REDELIVERY < failed_at - ON_TIME
        expected = [Due(g, "start", anchor_t4 + d) for g, d in spread.delays.items()
                    if anchor_t4 + d < failed_at - ON_TIME
                    and (anchor_t4 + d < killed_at - ON_TIME or redelivered_in_time)]
        fig = figures(entries, expected, ON_TIME, died=cluster.deaths())
        fig.late = [((g, "start"), delay) for g, delay in after]  # "late" here: started after the failure
        bodies_after = sum(1 for e in entries if e.kind == "run" and e.t > failed_at and e.guid != critical)
        print(f"\n  run {i}: {victim.name} SIGKILLed {jitter:+.3f}s from the critical start's due time; "
              f"failed at anchor+{failed_at - anchor_t4:.3f}s; started after the failure (t4 > t7): {len(after)}; "
              f"start bodies begun after it: {bodies_after}; of {len(expected)} starts due before it "
              f"lost={len(fig.lost)} duplicated={len(fig.duplicated)}", flush=True)
        for p in fig.problems():
            if "ran late" not in p:
                run.problem(p)
        if after:
            run.problem(f"{len(after)} RMs STARTED after the critical failure's t7, "
                        f"(guid, seconds after t7): {after[:8]}")
        after_abort_total += len(after)
        scenario.end_run(run, fig)
    problems = scenario.end("abort-with-worker-sigkill", started_after_failure=after_abort_total)
    assert not problems, "\n".join(problems)
