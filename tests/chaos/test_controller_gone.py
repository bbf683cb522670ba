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

import pytest

from .harness import CHAOS_ENV, ON_TIME, ROOT, Cluster, Run, Scenario, Spread, sleep_until

N = 100
LOW, HIGH = 5.0, 40.0
KILL_AFTER = 2.0


@pytest.mark.timeout(150)
def test_a_run_whose_controller_was_killed_runs_every_far_start_on_time_with_no_controller_attached(
    cluster: Cluster, scenario: Scenario
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
    run = Run(scenario, spread)  # no controller here: this process only reads Redis and the ledger
    run.wait_for_anchor(10.0, since="the controller's kill", fallback=killed)
    run.wait_finished(cluster.redis.now(), ON_TIME, slack=4.0)

    out = run.outcome(ON_TIME)
    starts = {e.guid: e.t for e in out.entries if e.kind == "effect" and e.action == "start"}
    ran_while_gone = sum(1 for g in spread.delays if starts.get(g, 0.0) > killed)
    print(f"\n  controller SIGKILLed {killed - float(info['deployed']):.2f}s after deploy; "
          f"starts that ran with no controller: {ran_while_gone} of {N}; lost={len(out.fig.lost)} "
          f"late={len(out.fig.late)} final states={dict(out.states)}", flush=True)
    run.judge(out)
    scenario.end_run(run, out.fig)
    problems = scenario.end("controller-sigkill", tolerance_s=ON_TIME, ran_without_controller=ran_while_gone)
    assert not problems, "\n".join(problems)
