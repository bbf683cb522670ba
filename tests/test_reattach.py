"""A run outlives its controller: the workers keep its timers, and a controller re-attaches at will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.keys import RUNS_KEY, Keys, run_member

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .rms import Plain

EXP = "exp-reattach"
HORIZON = "1.0"

# A controller with no worker of its own and an ETA horizon of 1 s: it schedules the deploy of
# each of its RMs 3 s and 5 s ahead (so they wait in the run's timers), prints the guids and the
# Redis times they are due, then waits to be killed.
FIRST = f"""
import json, sys, time
import tests.rms  # noqa: F401
from nepi_dist import ExperimentController
ec = ExperimentController(exp_id={EXP!r}, run_id=sys.argv[2], redis_url=sys.argv[1], local_worker=False)
due = {{}}
for delay in (3, 5):
    guid = ec.register_resource({Plain.get_rtype()!r})
    due[guid] = ec.store.now() + delay
    ec.schedule(f"{{delay}}s", ec.get_resource(guid).deploy)
print(json.dumps(due), flush=True)
time.sleep(600)
"""


@pytest.fixture
def worker(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    """One external worker on the test's Redis, sharing the controllers' horizon."""
    monkeypatch.setenv("NEPI_DIST_ETA_HORIZON", HORIZON)
    proc = start_worker_process(redis_server.url, "keeper", 4)
    try:
        wait_for_workers(redis_server.url, 1)
        yield proc
    finally:
        stop_process(proc)


def kill_first_controller(url: str, run_id: str) -> dict[int, float]:
    """Run the first controller until it scheduled its deploys, SIGKILL it; return guid -> due time."""
    first = subprocess.Popen([sys.executable, "-c", FIRST, url, run_id],
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT), stdout=subprocess.PIPE)
    try:
        assert first.stdout is not None
        due = {int(g): float(t) for g, t in json.loads(first.stdout.readline()).items()}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    return due


@pytest.mark.serial
def test_the_timers_of_a_run_whose_controller_was_killed_fire_on_time_with_no_controller_attached(
    redis_server: EmbeddedRedis, worker: subprocess.Popen[bytes]
) -> None:
    url = redis_server.url
    due = kill_first_controller(url, "run-orphan")
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys(EXP, "run-orphan")
    try:
        assert client.zcard(keys.timers) == 2, "both deploys wait in the run's timers, beyond the horizon"
        assert client.zscore(RUNS_KEY, run_member(EXP, "run-orphan")) is not None, "the workers keep the run"
        # No controller is attached: the worker's keeper publishes them.  Read the run's events.
        ready: dict[int, float] = {}
        last = "0-0"
        while len(ready) < len(due):
            assert float(client.time()[0]) < max(due.values()) + 10, f"deployed only {sorted(ready)}"
            for _, entries in client.xread({keys.events: last}, block=500) or []:
                for eid, fields in entries:
                    last = eid
                    if int(fields["s"]) == ResourceState.READY and int(fields["g"]) in due:
                        ready[int(fields["g"])] = float(fields["t"])
        late = {g: ready[g] - due[g] for g in due}
        print(f"deploys' lateness with no controller: {late}")
        assert all(0 <= d < 1.0 for d in late.values()), late
        assert client.zcard(keys.timers) == 0
    finally:
        client.close()


def test_a_controller_attached_to_a_run_whose_controller_died_watches_it_and_releases_it(
    redis_server: EmbeddedRedis, worker: subprocess.Popen[bytes]
) -> None:
    url = redis_server.url
    due = kill_first_controller(url, "run-watched")
    ec = ExperimentController(exp_id=EXP, run_id="run-watched", redis_url=url, local_worker=False)
    try:
        ec.wait_deployed(list(due), timeout=20)
        assert all(ec.state(g) == ResourceState.READY for g in due)
    finally:
        ec.shutdown()
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert client.zscore(RUNS_KEY, run_member(EXP, "run-watched")) is None, "a released run is off the list"
    finally:
        client.close()
