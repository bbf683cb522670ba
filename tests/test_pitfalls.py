"""The known Celery + Redis pitfalls: our design neither loses nor duplicates an action.

* an ETA longer than the broker's visibility timeout is delivered twice by plain
  Celery; nepi keeps such actions in the run's timer set until they come within
  the ETA horizon (below the visibility timeout);
* far-future ETA tasks pile up in worker memory with plain Celery; nepi's stay in Redis;
* a message delivered twice runs its action once (the claim on the action id);
* a claim held by a dead worker is taken over, one held by a live worker is not; the
  message of an action whose holder looks alive is looked at again when the holder's
  heartbeat would expire, so a worker SIGKILLed a moment ago loses nothing;
* ``celery[redis]`` is what is declared, and the redis transport imports;
* workers accept JSON only: a pickled message is refused.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, current_app, signals
from celery.contrib.testing.worker import start_worker
from packaging.requirements import Requirement

from nepi_dist import ExperimentController, ResourceFactory, ResourceManager, ResourceState
from nepi_dist.engine.celery_app import settings
from nepi_dist.engine.context import ACTION_TASK
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.keys import worker_key
from nepi_dist.engine.routing import POOL_QUEUE

from .conftest import ROOT, connected, stop_process, wait_for_workers

TICKER = "PitfallsTicker"


class PitfallsTicker(ResourceManager):
    """Counts every run of ``tick`` in Redis, with the Redis time of each run."""

    _rtype = TICKER

    def tick(self) -> None:
        store = self.ec.store
        client = store.client
        sec, usec = client.time()
        pipe = client.pipeline(transaction=True)
        pipe.incr(ticks_key(store.keys))
        pipe.rpush(store.keys.key("test", "ran", self.guid), f"{sec}.{usec:06d}")
        pipe.execute()
        self.set_finished()


ResourceFactory.register_type(PitfallsTicker)


def ticks_key(keys: Any) -> str:
    return str(keys.key("test", "ticks"))


def ticks(ec: ExperimentController) -> int:
    return int(ec.store.client.get(ticks_key(ec.store.keys)) or 0)


def runs_of(ec: ExperimentController, guid: int) -> list[float]:
    """Redis times at which ``tick`` ran on ``guid``."""
    return [float(t) for t in ec.store.client.lrange(ec.store.keys.key("test", "ran", guid), 0, -1)]


def task_id(ec: ExperimentController, aid: str) -> str:
    """The Celery task id nepi gives the message of action ``aid``."""
    return f"{ec.exp_id}.{ec.run_id}.{aid}"


def deliver(ec: ExperimentController, aid: str, guid: int, method: str = "tick", **options: Any) -> None:
    """Publish the message of action ``aid`` by hand, as a broker redelivery would."""
    ec.app.send_task(
        ACTION_TASK,
        args=[ec.exp_id, ec.run_id, aid, {"g": guid, "m": method}],
        task_id=task_id(ec, aid),
        queue=POOL_QUEUE,
        **options,
    )


class Postruns:
    """What the in-process worker returned for each action id (task_postrun signal)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.verdicts: dict[str, list[str]] = defaultdict(list)

    def __call__(self, sender: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) != ACTION_TASK or not args:
            return
        with self._cond:
            self.verdicts[str(args[2])].append(str(retval))
            self._cond.notify_all()

    def wait_for(self, aid: str, count: int, timeout: float = 15.0) -> list[str]:
        """Block until action ``aid`` was handled ``count`` times; return the verdicts."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.verdicts[aid]) >= count, timeout)
            return list(self.verdicts[aid])


@pytest.fixture
def postruns() -> Iterator[Postruns]:
    with connected(signals.task_postrun, Postruns()) as watcher:
        yield watcher


# -- a) ETA longer than the visibility timeout ----------------------------------------


def test_actions_due_beyond_the_visibility_timeout_run_once_at_their_time() -> None:
    n = 10
    ctl = ExperimentController(celery_settings={"visibility_timeout": 4, "eta_horizon": 1}, nthreads=8)
    try:
        assert ctl.app.conf.broker_transport_options["visibility_timeout"] == 4
        assert ctl.app.conf.nepi_eta_horizon == 1
        guids = [ctl.register_resource(TICKER) for _ in range(n)]
        t0 = time.monotonic()
        for g in guids:
            ctl.schedule("7s", ctl.get_resource(g).tick)
        # Beyond the horizon: held in the run's timer set, not published to the broker.
        timers = ctl.store.client.zrange(ctl.store.keys.timers, 0, -1, withscores=True)
        due = {int(json.loads(member)["p"]["g"]): score for member, score in timers}
        assert sorted(due) == guids
        assert ctl.store.client.llen(POOL_QUEUE) == 0
        ctl.wait(guids, ResourceState.FINISHED, timeout=15)
        # Plain Celery would run a second copy at the same due time (see the control
        # test below): give it until 9 s after scheduling to show up.
        threading.Event().wait(max(0.0, 9.0 - (time.monotonic() - t0)))
        assert ticks(ctl) == n
        for g in guids:
            runs = runs_of(ctl, g)
            assert len(runs) == 1, f"guid {g} ran {len(runs)} times"
            # Due and run times are both on the Redis clock; 10 ms allow for the
            # controller's estimate of that clock.
            assert due[g] - 0.01 <= runs[0] <= due[g] + 3.0, (g, runs[0] - due[g])
    finally:
        ctl.shutdown()


def test_plain_celery_delivers_an_eta_task_beyond_the_visibility_timeout_twice(
    redis_server: EmbeddedRedis,
) -> None:
    """The control experiment: the pitfall the test above avoids is real with these settings."""
    conf = settings(redis_server.url, visibility_timeout=2, eta_horizon=1)
    conf["task_default_queue"] = "pitfalls.raw"
    app = Celery("pitfalls-raw", set_as_current=False)
    app.conf.update(conf)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    twice = threading.Event()

    @app.task(name="pitfalls.raw_tick", shared=False, acks_late=True, ignore_result=True)
    def raw_tick() -> None:
        if client.incr("pitfalls:raw_ticks") >= 2:
            twice.set()

    # start_worker makes its app the process default: put the previous one back afterwards.
    previous = current_app._get_current_object()
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10):
            app.send_task("pitfalls.raw_tick", countdown=5)
            twice.wait(12)
            threading.Event().wait(0.5)  # a third copy, if any, runs at the same moment
    finally:
        previous.set_default()
        previous.set_current()
        client.close()
    assert int(client.get("pitfalls:raw_ticks") or 0) >= 2, "plain Celery ran the ETA task only once"


# -- a2) a burst of ETA tasks due together -------------------------------------------------


def revoked_burst_drain(url: str, app_name: str, n: int = 60) -> float:
    """Seconds after their ETA until a worker of ``tests.eta_burst:<app_name>`` let go of n revoked ETA tasks.

    The n tasks are due at the same moment, 2 s ahead; the worker receives
    them (they wait in its timer as unacknowledged messages), they are
    revoked, and at their ETA the worker discards them: no pool thread runs,
    so nothing but the timer wakes the worker's event loop.
    """
    from . import eta_burst

    queue = f"burst.{app_name}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", f"tests.eta_burst:{app_name}", "worker", "--pool", "threads",
         "--concurrency", "8", "-Q", queue, "--hostname", f"{app_name}@%h", "--loglevel", "WARNING"],
        env=env, cwd=str(ROOT),
    )
    client = redis.Redis.from_url(url, decode_responses=True)
    app = Celery("burst-sender", set_as_current=False)
    app.conf.update(settings(url))
    try:
        wait_for_workers(url, 1)
        due = time.time() + 2.0
        eta = datetime.datetime.fromtimestamp(due, tz=datetime.UTC)
        ids = [f"burst-{app_name}-{i}" for i in range(n)]
        with app.producer_or_acquire() as producer:
            for tid in ids:
                app.send_task(eta_burst.STAMP, args=["burst:ran"], eta=eta, queue=queue, task_id=tid,
                              producer=producer)
        deadline = time.monotonic() + 10
        while client.hlen("unacked") < n and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert client.hlen("unacked") == n, "the worker did not receive every ETA task"
        app.control.revoke(ids)
        deadline = time.monotonic() + 30
        while client.hlen("unacked") and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert client.hlen("unacked") == 0, "the worker still holds revoked tasks after 30 s"
        assert client.llen("burst:ran") == 0, "a revoked task ran"
        return time.time() - due
    finally:
        app.close()
        client.close()
        stop_process(worker)


def test_plain_celery_lets_go_of_revoked_eta_tasks_due_together_only_ten_per_second(
    redis_server: EmbeddedRedis,
) -> None:
    """The control experiment: kombu fires 10 due timers, then polls a quiet socket for 1 s."""
    assert revoked_burst_drain(redis_server.url, "plain") > 3.0


@pytest.mark.serial
def test_a_nepi_worker_lets_go_of_revoked_eta_tasks_due_together_at_once(redis_server: EmbeddedRedis) -> None:
    assert revoked_burst_drain(redis_server.url, "nepi") < 0.5


# -- b) ETA pile-up -----------------------------------------------------------------------


def held_by_workers(ec: ExperimentController) -> set[str]:
    """Ids of every task a worker holds: delivered to it and not yet acknowledged.

    With ``acks_late`` kombu's Redis transport keeps each message a consumer
    received in its ``unacked`` hash until the worker acknowledges it, so an
    ETA task waiting in a worker's timer is there.  Reading the hash asks the
    broker, not the workers: no broadcast whose reply can be lost.
    """
    held: set[str] = set()
    for raw in ec.store.client.hvals("unacked"):
        message, _exchange, _routing_key = json.loads(raw)
        held.add(message["headers"]["id"])
    return held


def test_far_future_actions_wait_in_redis_not_in_a_worker(ec: ExperimentController) -> None:
    rm = ec.get_resource(ec.register_resource("Plain"))
    far = [ec.schedule("1h", functools.partial(rm.echo, i)) for i in range(500)]
    near = [ec.schedule("30s", functools.partial(rm.echo, i)) for i in range(5)]
    client = ec.store.client
    timers = {json.loads(m)["aid"] for m in client.zrange(ec.store.keys.timers, 0, -1)}
    assert timers == set(far)
    assert not set(far) & set(ec.store.pending_ids())
    near_ids = {task_id(ec, aid) for aid in near}
    far_ids = {task_id(ec, aid) for aid in far}
    deadline = time.monotonic() + 15
    held = held_by_workers(ec)
    while not near_ids <= held and time.monotonic() < deadline:
        threading.Event().wait(0.05)
        held = held_by_workers(ec)
    assert near_ids <= held, "actions within the horizon are ordinary ETA tasks in the worker"
    assert not far_ids & held, "no worker holds an action due in an hour"
    assert client.llen(POOL_QUEUE) == 0, "nor does the broker queue"


# -- c) duplicate delivery ---------------------------------------------------------------


def test_an_action_delivered_twice_runs_once(ec: ExperimentController, postruns: Postruns) -> None:
    g = ec.register_resource(TICKER)
    aid = "pitfalls-dup"
    ec.store.add_pending([(aid, {"g": g, "m": "tick"}, ec.store.now())])
    deliver(ec, aid, g)
    deliver(ec, aid, g)
    verdicts = postruns.wait_for(aid, 2)
    assert len(verdicts) == 2
    assert verdicts.count("done") == 1
    assert ticks(ec) == 1
    assert len(runs_of(ec, g)) == 1
    assert ec.state(g) == ResourceState.FINISHED


# -- d) claims held by dead and live workers -----------------------------------------------


def test_an_action_claimed_by_a_worker_whose_heartbeat_is_gone_is_taken_over_after_a_heartbeat_period(
    ec: ExperimentController, postruns: Postruns
) -> None:
    g = ec.register_resource(TICKER)
    aid, dead = "pitfalls-orphan", "dead-host.4242.000000"
    client = ec.store.client
    assert not client.exists(worker_key(dead))
    client.hset(ec.store.keys.running, aid, dead)
    deliver(ec, aid, g)  # the broker's redelivery after the holder died
    # A heartbeat missing once may be a Redis stall that expired it: looked at again, then taken over.
    assert postruns.wait_for(aid, 2) == [f"suspect:{dead}", "resumed:done"]
    assert len(runs_of(ec, g)) == 1
    assert ec.state(g) == ResourceState.FINISHED
    assert not client.hexists(ec.store.keys.running, aid)


def test_an_action_claimed_by_a_worker_known_dead_is_taken_over_at_once(
    ec: ExperimentController, postruns: Postruns
) -> None:
    g = ec.register_resource(TICKER)
    aid, dead = "pitfalls-tombstone", "dead-host.4245.000000"
    client = ec.store.client
    client.set(worker_key(dead), json.dumps({"dead": True}), ex=15)  # what its successor leaves
    client.hset(ec.store.keys.running, aid, f"{dead}/0a0b")
    deliver(ec, aid, g)
    assert postruns.wait_for(aid, 1) == ["resumed:done"]
    assert len(runs_of(ec, g)) == 1
    assert ec.state(g) == ResourceState.FINISHED
    assert not client.hexists(ec.store.keys.running, aid)


def test_an_action_held_by_a_live_worker_is_not_run_again_and_is_done_once_it_finishes(
    ec: ExperimentController, postruns: Postruns
) -> None:
    g = ec.register_resource(TICKER)
    aid, alive = "pitfalls-held", "live-host.4243.000000"
    client = ec.store.client
    client.set(worker_key(alive), json.dumps({"pid": 4243}), ex=2)
    client.hset(ec.store.keys.running, aid, alive)
    try:
        deliver(ec, aid, g)
        assert postruns.wait_for(aid, 1) == [f"wait:{alive}"]
        assert runs_of(ec, g) == []
        assert client.hget(ec.store.keys.running, aid) == alive
        # The holder finishes its run of the action (and stays alive).
        client.set(worker_key(alive), json.dumps({"pid": 4243}), ex=60)
        client.hdel(ec.store.keys.running, aid)
        # The worker looked again once the heartbeat it saw would have expired.
        assert postruns.wait_for(aid, 2, timeout=10) == [f"wait:{alive}", "skip:done"]
        assert runs_of(ec, g) == []
        assert ec.state(g) == ResourceState.NEW
    finally:
        client.delete(worker_key(alive))


def test_an_action_held_by_a_worker_that_dies_before_its_heartbeat_expires_runs_once_later(
    ec: ExperimentController, postruns: Postruns
) -> None:
    g = ec.register_resource(TICKER)
    aid, doomed = "pitfalls-doomed", "doomed-host.4244.000000"
    client = ec.store.client
    # SIGKILLed a moment ago: its heartbeat still has 2 s to live, and will not be renewed.
    client.set(worker_key(doomed), json.dumps({"pid": 4244}), ex=2)
    client.hset(ec.store.keys.running, aid, doomed)
    deliver(ec, aid, g)  # the broker's redelivery of the message the dead worker held
    assert postruns.wait_for(aid, 3, timeout=15) == [f"wait:{doomed}", f"suspect:{doomed}", "resumed:done"]
    assert len(runs_of(ec, g)) == 1
    assert ec.state(g) == ResourceState.FINISHED
    assert not client.hexists(ec.store.keys.running, aid)


# -- e) celery[redis] ----------------------------------------------------------------------


def test_celery_is_required_with_its_redis_extra_and_the_transport_works(redis_server: EmbeddedRedis) -> None:
    reqs = [Requirement(r) for r in importlib.metadata.requires("nepi-dist") or []]
    celery_reqs = [r for r in reqs if r.name == "celery" and r.marker is None]
    assert celery_reqs, "nepi-dist does not require celery"
    assert all("redis" in r.extras for r in celery_reqs), [str(r) for r in celery_reqs]

    import kombu.transport.redis as redis_transport
    from kombu import Connection

    assert redis_transport.redis is not None, "kombu's redis transport has no redis client library"
    with Connection(redis_server.url) as conn:
        assert isinstance(conn.transport, redis_transport.Transport)
        conn.ensure_connection(max_retries=1)
        assert conn.default_channel.client.ping()


# -- f) JSON only ----------------------------------------------------------------------------


def test_a_pickled_message_is_refused(ec: ExperimentController, postruns: Postruns) -> None:
    assert ec.app.conf.accept_content == ["json"]
    pickled, marker = ec.register_resource(TICKER), ec.register_resource(TICKER)
    ec.store.add_pending([("pitfalls-pickle", {"g": pickled, "m": "tick"}, ec.store.now()),
                          ("pitfalls-json", {"g": marker, "m": "tick"}, ec.store.now())])
    refused = threading.Event()

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        if message is not None and message.headers.get("id") == task_id(ec, "pitfalls-pickle"):
            refused.set()

    signals.task_rejected.connect(on_rejected, weak=False)
    try:
        deliver(ec, "pitfalls-pickle", pickled, serializer="pickle")
        assert refused.wait(15), "the worker did not refuse the pickled message"
    finally:
        signals.task_rejected.disconnect(on_rejected)
    # A JSON action published after it, on the same queue, runs normally.
    deliver(ec, "pitfalls-json", marker)
    assert postruns.wait_for("pitfalls-json", 1) == ["done"]
    assert ec.state(marker) == ResourceState.FINISHED
    assert postruns.verdicts["pitfalls-pickle"] == []
    assert runs_of(ec, pickled) == []
    assert ec.state(pickled) == ResourceState.NEW
    assert "pitfalls-pickle" in ec.store.pending_ids(), "the action was never claimed"
    assert ec.store.client.llen(POOL_QUEUE) == 0, "the refused message is not requeued"
