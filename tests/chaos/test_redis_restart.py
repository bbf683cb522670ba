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
import time
from collections import Counter
from collections.abc import Callable

import pytest

from .harness import (
    REDELIVERY,
    Cluster,
    Figures,
    Waiter,
    build_spread,
    expected_actions,
    failure_messages,
    figures,
    final_states,
    report,
    sleep_until,
    wait_for_workers,
)

N = 300
ITERATIONS = 3
SPREAD = 3.0
DOWN = 2.0


@pytest.mark.timeout(240)
def test_a_redis_killed_and_restarted_from_its_aof_loses_no_action_runs_none_twice_and_its_workers_survive(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    cluster.start(workers=2)
    rng = random.Random(2)
    total = Figures()
    problems: list[str] = []
    raw_total: Counter[str] = Counter()
    deaths_total = 0
    for i in range(ITERATIONS):
        ec = cluster.controller(f"chaos-redis-kill-{i}")
        spread = build_spread(ec, N, 0.0, SPREAD, seed=100 + i)
        ledger = cluster.ledger(ec.exp_id, ec.run_id)
        ec.deploy()
        waiter = Waiter(ec, spread.guids).start()  # the user waits while Redis dies
        cluster.on_close(waiter.stop)
        if not ledger.wait_for([(spread.anchor, "start")], time.monotonic() + 30):
            problems.append(f"run {i}: the anchor never started within 30 s of deploy")
        anchor_t = ledger.first(spread.anchor, "start") or cluster.redis.now()
        offset = rng.uniform(1.0, 2.0)
        sleep_until(anchor_t + offset, cluster.redis)
        fault_began = cluster.redis.now()
        cluster.redis.kill()
        time.sleep(DOWN)
        cluster.redis.start()
        back = cluster.redis.now()

        deadline = time.monotonic() + max(0.0, anchor_t + spread.last_offset - back) + REDELIVERY + 5
        ledger.wait_for(spread.finish_keys(), deadline, give_up=lambda: not any(w.alive for w in cluster.workers))
        time.sleep(1.0)  # the waiter sees the end too
        waiter.stop()

        dead = [w for w in cluster.workers if not w.alive]
        alive = len(cluster.workers) - len(dead)
        if alive:
            try:
                wait_for_workers(cluster.url, alive, timeout=20)
            except RuntimeError as exc:
                problems.append(f"run {i}: a worker still running does not serve: {exc}")
        client = cluster.redis.client()
        states = final_states(client, ec.exp_id, ec.run_id, spread.guids)
        entries = ledger.read()
        fig = figures(entries, expected_actions(spread, client, entries), REDELIVERY, fault=(fault_began, back),
                      died=cluster.deaths())
        print(f"\n  run {i}: Redis SIGKILLed {offset:.2f}s after the anchor started, back {DOWN:g}s later; "
              f"lost={len(fig.lost)} duplicated={len(fig.duplicated)} late={len(fig.late)} "
              f"recovery={fig.recovery:.2f}s workers dead={[w.name for w in dead]} "
              f"wait_finished raised raw={dict(waiter.raw)} typed={dict(waiter.typed)} "
              f"final states={dict(states)}", flush=True)
        problems += [f"run {i}: {p}" for p in fig.problems()]
        for w in dead:
            problems.append(f"run {i}: worker {w.name} exited (code {w.returncode}): {w.errors(1)}")
        if waiter.raw:
            problems.append(f"run {i}: wait_finished raised raw errors {dict(waiter.raw)}, e.g. {waiter.examples}")
        if states != {"FINISHED": len(spread.guids)}:
            problems.append(f"run {i}: not every RM ended FINISHED: {dict(states)}"
                            + (f"; FAILED with {failure_messages(client, ec.exp_id, ec.run_id, spread.guids)}"
                               if states.get("FAILED") else ""))
        client.close()
        total.add(fig)
        raw_total.update(waiter.raw)
        deaths_total += len(dead)
        shutdown_errors = cluster.release(ec)  # restarts the dead workers first
        if shutdown_errors:
            problems.append(f"run {i}: ec.shutdown() raised {shutdown_errors}")
    report("redis-sigkill-aof-restart", total, record_property, tolerance_s=REDELIVERY,
           worker_deaths=deaths_total, raw_errors=sum(raw_total.values()))
    assert not problems, "\n".join(problems)
