"""Chaos 4: the controller SIGKILLed 2 s after deploy, its timers beyond the ETA horizon, and no re-attach.

A controller in its own process (:mod:`tests.chaos.controller`, external
workers only) deploys 100 ChaosSteps whose starts wait 5-40 s after an
anchor's, beyond the 4 s ETA horizon, so they wait in the run's timers.  It
is SIGKILLed 2 s after the deploy and no controller ever attaches to the run
again (this process only reads Redis and the ledger).  The workers that serve
the run must carry it: every start on time within :data:`ON_TIME` s, every
RM FINISHED.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from .harness import (
    CHAOS_ENV,
    ON_TIME,
    ROOT,
    Cluster,
    Spread,
    expected_actions,
    failure_messages,
    figures,
    final_states,
    report,
    sleep_until,
)

N = 100
LOW, HIGH = 5.0, 40.0
KILL_AFTER = 2.0


@pytest.mark.timeout(150)
def test_a_run_whose_controller_was_killed_runs_every_far_start_on_time_with_no_controller_attached(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    cluster.start(workers=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(cluster.root / "home"), **CHAOS_ENV)
    cmd = [sys.executable, "-m", "tests.chaos.controller", cluster.url, "chaos-controller-gone", str(N),
           str(LOW), str(HIGH), "4"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    cluster.on_close(proc.kill)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    assert line, f"the controller process printed nothing (exit code {proc.poll()})"
    info = json.loads(line)
    sleep_until(float(info["deployed"]) + KILL_AFTER, cluster.redis)
    proc.kill()
    proc.wait()
    killed = cluster.redis.now()

    spread = Spread(info["exp_id"], info["run_id"], int(info["anchor"]),
                    {int(g): float(d) for g, d in info["delays"].items()})
    ledger = cluster.ledger(spread.exp_id, spread.run_id)
    problems: list[str] = []
    if not ledger.wait_for([(spread.anchor, "start")], time.monotonic() + 10):
        problems.append("the anchor never started")
    anchor_t = ledger.first(spread.anchor, "start") or killed
    ledger.wait_for(spread.finish_keys(),
                    time.monotonic() + max(0.0, anchor_t + spread.last_offset - cluster.redis.now()) + ON_TIME + 4)

    client = cluster.redis.client()
    states = final_states(client, spread.exp_id, spread.run_id, spread.guids)
    entries = ledger.read()
    fig = figures(entries, expected_actions(spread, client, entries), ON_TIME, died=cluster.deaths())
    starts = {e.guid: e.t for e in entries if e.kind == "effect" and e.action == "start"}
    ran_while_gone = sum(1 for g in spread.delays if starts.get(g, 0.0) > killed)
    print(f"\n  controller SIGKILLed {killed - float(info['deployed']):.2f}s after deploy; "
          f"starts that ran with no controller: {ran_while_gone} of {N}; lost={len(fig.lost)} "
          f"late={len(fig.late)} final states={dict(states)}", flush=True)
    problems += fig.problems()
    if states != {"FINISHED": len(spread.guids)}:
        problems.append(f"not every RM ended FINISHED: {dict(states)}"
                        + (f"; FAILED with {failure_messages(client, spread.exp_id, spread.run_id, spread.guids)}"
                           if states.get("FAILED") else ""))
    client.close()
    report("controller-sigkill", fig, record_property, tolerance_s=ON_TIME, ran_without_controller=ran_while_gone)
    assert not problems, "\n".join(problems)
