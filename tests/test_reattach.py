"""A run outlives its controller: another one attached to the same run carries it on."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import redis

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.embedded import EmbeddedRedis
from nepi_dist.keys import Keys

from .conftest import ROOT
from .rms import Plain

EXP, RUN = "exp-reattach", "run-1"

# The first controller: no worker of its own, an ETA horizon of 1 s, one RM whose
# deploy is scheduled 3 s ahead (so it waits in the run's timers), then it is killed.
FIRST = f"""
import sys, time
import tests.rms  # noqa: F401
from nepi_dist import ExperimentController
ec = ExperimentController(exp_id={EXP!r}, run_id={RUN!r}, redis_url=sys.argv[1], local_worker=False,
                          celery_settings={{"eta_horizon": 1.0}})
guid = ec.register_resource({Plain.get_rtype()!r})
ec.schedule("3s", ec.get_resource(guid).deploy)
print(guid, flush=True)
time.sleep(600)
"""


def test_a_controller_attached_to_a_run_whose_controller_died_fires_the_timers_that_came_due(
    redis_server: EmbeddedRedis,
) -> None:
    url = redis_server.url
    first = subprocess.Popen([sys.executable, "-c", FIRST, url], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             cwd=str(ROOT), stdout=subprocess.PIPE)
    try:
        assert first.stdout is not None
        guid = int(first.stdout.readline())
    finally:
        first.kill()
        first.wait()
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys(EXP, RUN)
    try:
        assert client.zcard(keys.timers) == 1, "the deploy waits in the run's timers, beyond the horizon"
        threading.Event().wait(4.0)  # past its due time, with no controller attached
        assert client.zcard(keys.timers) == 1, "nothing fired it"
        assert client.hget(keys.rm(guid), "state") == str(int(ResourceState.NEW))
    finally:
        client.close()

    ec = ExperimentController(exp_id=EXP, run_id=RUN, redis_url=url, local_worker=True,
                              celery_settings={"eta_horizon": 1.0}, nthreads=4)
    try:
        ec.wait_deployed([guid], timeout=15)
        assert ec.state(guid) == ResourceState.READY
        assert ec.store.client.zcard(ec.store.keys.timers) == 0
    finally:
        ec.shutdown()
