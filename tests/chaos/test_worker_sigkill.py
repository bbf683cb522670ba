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
import time
from collections.abc import Callable

import pytest

from .harness import (
    REDELIVERY,
    Cluster,
    Figures,
    build_spread,
    expected_actions,
    failure_messages,
    figures,
    final_states,
    report,
    sleep_until,
)

N = 300
ITERATIONS = 5
SPREAD = 3.0


@pytest.mark.timeout(280)
def test_a_worker_killed_mid_run_and_restarted_loses_no_action_runs_none_twice_and_leaves_none_started(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    cluster.start(workers=2)
    client = cluster.redis.client()
    cluster.on_close(client.close)
    rng = random.Random(9)
    total = Figures()
    problems: list[str] = []
    for i in range(ITERATIONS):
        ec = cluster.controller(f"chaos-worker-kill-{i}")
        spread = build_spread(ec, N, 0.0, SPREAD, seed=i)
        ledger = cluster.ledger(ec.exp_id, ec.run_id)
        ec.deploy()
        if not ledger.wait_for([(spread.anchor, "start")], time.monotonic() + 30):
            problems.append(f"run {i}: the anchor never started within 30 s of deploy")
        anchor_t = ledger.first(spread.anchor, "start") or cluster.redis.now()
        victim = cluster.workers[i % len(cluster.workers)]
        offset = rng.uniform(0.8, SPREAD - 0.8)
        sleep_until(anchor_t + offset, cluster.redis)
        fault_began = cluster.redis.now()
        victim.kill()
        victim.start()
        restarted = cluster.redis.now()
        last_due = anchor_t + spread.last_offset
        ledger.wait_for(spread.finish_keys(), time.monotonic() + max(0.0, last_due - restarted) + REDELIVERY + 5)

        states = final_states(client, ec.exp_id, ec.run_id, spread.guids)  # before the ledger: it is as new
        entries = ledger.read()
        fig = figures(entries, expected_actions(spread, client, entries), REDELIVERY, fault=(fault_began, restarted),
                      died=cluster.deaths())
        runs = sum(1 for e in entries if e.kind == "run")
        print(f"\n  run {i}: {victim.name} SIGKILLed {offset:.2f}s after the anchor started and restarted; "
              f"lost={len(fig.lost)} duplicated={len(fig.duplicated)} late={len(fig.late)} "
              f"recovery={fig.recovery:.2f}s start bodies run={runs} final states={dict(states)}", flush=True)
        problems += [f"run {i}: {p}" for p in fig.problems()]
        if states != {"FINISHED": len(spread.guids)}:
            problems.append(f"run {i}: not every RM ended FINISHED: {dict(states)}"
                            + (f"; FAILED with {failure_messages(client, ec.exp_id, ec.run_id, spread.guids)}"
                               if states.get("FAILED") else ""))
        total.add(fig)
        problems += [f"run {i}: ec.shutdown() raised {e}" for e in cluster.release(ec)]
    report("worker-sigkill", total, record_property, tolerance_s=REDELIVERY)
    assert not problems, "\n".join(problems)
