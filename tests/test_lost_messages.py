"""No action is lost on its way to a worker, nor left to a live worker that no longer runs it.

Three windows, each opened by a real fault on real processes:

* a consumer pops a message (kombu's BRPOP) and dies before kombu records it
  as unacknowledged (its HSET): no visibility timeout brings it back.  The
  test is that consumer: it pops the real message from the real queue;
* a publisher dies between recording an action as pending and publishing it:
  a controller process SIGKILLs itself at the publish;
* Redis loses the end of an action (a crash of its host under ``everysec``,
  a failover to a replica behind) but keeps its claim: the claim names a
  worker that is alive and no longer runs it.  The lost write is written
  back into Redis as it would be left.

In the first two the run's keeper sends the action again from ``P:sent`` a
visibility timeout after it was due; in the third the holder gives the claim
up at its next heartbeat and the action's next delivery resumes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.engine.connection import redis_client
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.heartbeat import HEARTBEAT_EVERY, live_workers
from nepi_dist.engine.keeper import LOST_GRACE
from nepi_dist.engine.routing import POOL_QUEUE
from nepi_dist.engine.store import Store

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .rms import TwoStep

VISIBILITY = 4.0
#: A claim of ARGV[2] on action ARGV[1], still pending, as if it ran and Redis lost its end.
LEFT_TO_HOLDER = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""


def ledger_lines(path: Path) -> list[str]:
    """The ``first``/``resumed`` word of each run of a TwoStep's start."""
    return [line.split()[2] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_state(store: Store, guid: int, state: ResourceState, timeout: float) -> float:
    """Poll Redis until ``guid`` is in ``state``; return the seconds it took (fails the test past ``timeout``)."""
    began = time.monotonic()
    while store.client.hget(store.keys.rm(guid), "state") != str(int(state)):
        if time.monotonic() - began > timeout:
            fields = store.client.hgetall(store.keys.rm(guid))
            pytest.fail(f"guid {guid} not {state.name} within {timeout:g}s: {fields}")
        time.sleep(0.1)
    return time.monotonic() - began


def test_a_message_popped_by_a_consumer_that_died_before_recording_it_is_sent_again_and_runs_once(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEPI_DIST_VISIBILITY_TIMEOUT", f"{VISIBILITY:g}")
    url = redis_server.url
    ledger = tmp_path / "ledger"
    ec = ExperimentController(redis_url=url, local_worker=False, celery_settings={"visibility_timeout": VISIBILITY})
    worker = None
    try:
        g = ec.register_resource(TwoStep.get_rtype())
        ec.set(g, "ledger", str(ledger))
        ec.deploy()  # no worker yet: the deploy's message waits in the queue
        client = ec.store.client
        deadline = time.monotonic() + 10
        while client.llen(POOL_QUEUE) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = client.rpop(POOL_QUEUE)  # what kombu's BRPOP does; the consumer dies before its HSET unacked
        assert raw is not None, "the deploy published nothing"
        assert client.hlen("unacked") == 0 and client.llen(POOL_QUEUE) == 0, "the message must be gone for good"
        store = ec.store
        assert set(client.hkeys(store.keys.sent)) == set(store.pending_ids()) != set(), "its payload is kept"
        popped = time.monotonic()
        worker = start_worker_process(url, "lost1", 4)
        ec.wait_finished([g], timeout=40)
        took = time.monotonic() - popped
        assert ec.state(g) == ResourceState.FINISHED
        assert ledger_lines(ledger) == ["first"], "the start ran once"
        assert VISIBILITY <= took <= VISIBILITY + LOST_GRACE + 15, took
        assert ec.store.client.hlen(ec.store.keys.sent) == 0, "every action was claimed: nothing left to re-send"
    finally:
        ec.shutdown()
        if worker is not None:
            stop_process(worker)


PUBLISHER = textwrap.dedent("""
    import json, os, signal, sys
    import tests.rms  # noqa: F401  (the test RM types)
    from nepi_dist import ExperimentController
    from nepi_dist.engine.context import RunContext

    url, ledger, out = sys.argv[1:4]
    ec = ExperimentController(redis_url=url, local_worker=False, celery_settings={"visibility_timeout": 4})
    g = ec.register_resource("TwoStep")
    ec.set(g, "ledger", ledger)
    with open(out, "w") as f:
        json.dump([ec.store.exp_id, ec.store.run_id, g], f)

    def die(*args, **kwargs):  # the actions are recorded as pending: the publisher dies before it publishes
        os.kill(os.getpid(), signal.SIGKILL)

    RunContext._publish = die
    ec.deploy()
""")


def test_an_action_whose_publisher_died_before_publishing_it_is_sent_by_the_keeper_and_runs_once(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEPI_DIST_VISIBILITY_TIMEOUT", f"{VISIBILITY:g}")
    url = redis_server.url
    ledger, out = tmp_path / "ledger", tmp_path / "ids.json"
    worker = start_worker_process(url, "lost2", 4)
    try:
        wait_for_workers(url, 1)
        proc = subprocess.run([sys.executable, "-c", PUBLISHER, url, str(ledger), str(out)], cwd=str(ROOT),
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert proc.returncode == -9, "the publisher must die at its publish"
        exp_id, run_id, g = json.loads(out.read_text())
        store = Store(redis_client(url), exp_id, run_id)
        assert store.pending_ids(), "the deploy was recorded as pending before the publish"
        assert store.client.hlen(store.keys.sent) == len(store.pending_ids()), "with its payload"
        took = wait_for_state(store, g, ResourceState.FINISHED, timeout=40)
        assert ledger_lines(ledger) == ["first"], "the start ran once"
        assert took >= VISIBILITY - 1, took
    finally:
        stop_process(worker)


def test_a_claim_held_by_a_live_worker_that_no_longer_runs_it_is_given_up_and_its_action_resumed_elsewhere(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEPI_DIST_VISIBILITY_TIMEOUT", f"{VISIBILITY:g}")
    monkeypatch.setenv("NEPI_DIST_ETA_HORIZON", "3.5")  # g's start, 3 s ahead, is published at once
    url = redis_server.url
    ledger = tmp_path / "ledger"
    holder = start_worker_process(url, "holder", 4, "--host", "elsewhere")  # alive, serves no queue of this run
    other = start_worker_process(url, "other", 4)
    ec = ExperimentController(redis_url=url, local_worker=False, celery_settings={"visibility_timeout": VISIBILITY})
    try:
        wait_for_workers(url, 2)
        anchor = ec.register_resource(TwoStep.get_rtype())
        ec.set(anchor, "hold", 1.0)
        g = ec.register_resource(TwoStep.get_rtype())
        ec.set(g, "ledger", str(ledger))
        ec.register_condition(g, ResourceAction.START, anchor, ResourceState.STARTED, "3s")
        ec.deploy()
        ec.wait_started([anchor], timeout=30)
        store, client = ec.store, ec.store.client
        holder_id = next(w for w, info in live_workers(client).items() if info.get("host") == "elsewhere")
        k = store.keys
        aid = ""
        deadline = time.monotonic() + 2.5
        while not aid and time.monotonic() < deadline:  # the start the anchor's STARTED released, due in 3 s
            sent = {a: json.loads(p) for a, p in client.hgetall(k.sent).items()}
            later = {a for a, due in client.zrange(k.pending, 0, -1, withscores=True) if due > store.now() + 1}
            aid = next((a for a, p in sent.items() if a in later and p["g"] == g and p["m"].startswith("start")), "")
            time.sleep(0.02)
        assert aid, "g's start was not published, due 3 s after the anchor started"
        # What a Redis that lost the action's end leaves: claimed by the holder, never finished
        # (one script, so that no worker claims it in between).
        left = client.eval(LEFT_TO_HOLDER, 3, k.pending, k.sent, k.running, aid, f"{holder_id}/0ff1ce00")
        assert left == 1
        began = time.monotonic()
        ec.wait_finished([g], timeout=45)
        took = time.monotonic() - began
        assert len(ledger_lines(ledger)) == 1, "taken over from the holder, and run once"
        events = [int(f["s"]) for _, f in client.xrange(store.keys.events) if int(f["g"]) == g]
        assert events.count(ResourceState.STARTED) == 1 and events[-1] == ResourceState.FINISHED, events
        assert not client.hexists(store.keys.running, aid)
        print(f"\n{sent[aid]['m']} recovered {took:.1f}s after its claim was left to the holder")
        assert took <= 3 + HEARTBEAT_EVERY + 15 + 5, took  # due, given up at a heartbeat, looked at again
    finally:
        ec.shutdown()
        stop_process(holder)
        stop_process(other)
