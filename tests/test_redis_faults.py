"""Redis that stalls, loses a reply, may evict keys, or keeps a run forever.

Replies are lost for real: a TCP proxy between the client and a real
redis-server closes the connection instead of forwarding the next reply, so
the command ran in Redis and the client sends it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.connection import redis_client
from nepi_dist.engine.embedded import EmbeddedRedis, free_port
from nepi_dist.engine.keys import RUNS_KEY, Keys
from nepi_dist.engine.store import Store
from nepi_dist.errors import RedisConfigError, RedisUnavailableError

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .rms import Plain, TwoStep


class ReplyCutter:
    """A TCP proxy to a redis-server that can drop the next reply and cut the connection."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._cut = threading.Event()
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_next_reply(self) -> None:
        self._cut.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if replies and self._cut.is_set():
                    self._cut.clear()
                    self.cuts += 1
                    break  # the command ran in Redis; its reply never arrives
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def cutter(redis_server: EmbeddedRedis) -> Iterator[ReplyCutter]:
    proxy = ReplyCutter(redis_server.port)
    try:
        yield proxy
    finally:
        proxy.close()


def registered(store: Store, n: int = 1) -> list[int]:
    return [store.register(Plain.get_rtype(), None) for _ in range(n)]


def events_of(store: Store, guid: int) -> list[int]:
    return [int(f["s"]) for _, f in store.client.xrange(store.keys.events) if int(f["g"]) == guid]


def test_a_transition_whose_reply_was_lost_is_sent_again_and_applied_once(cutter: ReplyCutter) -> None:
    store = Store(redis_client(cutter.url), "exp-faults", "run-1")
    (g,) = registered(store)
    store.transition(g, ResourceState.DISCOVERED, horizon=60)  # the script is loaded and cached
    cutter.cut_next_reply()
    result = store.transition(g, ResourceState.READY, horizon=60, through=[ResourceState.PROVISIONED])
    assert cutter.cuts == 1, "the reply was really lost"
    assert result.changed is False, "the second sending found the transition applied"
    assert store.state(g) == ResourceState.READY
    assert events_of(store, g) == [ResourceState.DISCOVERED, ResourceState.PROVISIONED, ResourceState.READY]


def test_a_registration_whose_reply_was_lost_registers_one_resource(cutter: ReplyCutter) -> None:
    store = Store(redis_client(cutter.url), "exp-faults", "run-5")
    registered(store)  # the script is loaded and cached
    cutter.cut_next_reply()
    assert store.register(Plain.get_rtype(), None) == 2
    assert cutter.cuts == 1
    cutter.cut_next_reply()
    assert store.register(Plain.get_rtype(), 7) == 7, "an explicit guid sent again is not a duplicate"
    assert store.guids() == [1, 2, 7]


def test_a_replayed_transition_does_not_undo_a_later_one(redis_server: EmbeddedRedis) -> None:
    store = Store(redis_client(redis_server.url), "exp-faults", "run-2")
    (g,) = registered(store)
    k = store.keys
    args = [int(ResourceState.STARTED), "", g, k.prefix, 60, "", "token-1-abc"]
    keys = [k.rm(g), k.wait(g), k.run, k.events, k.outbox, k.pending, k.alarm, k.timers]
    store._transition(client=store.client, keys=keys, args=args)
    store.transition(g, ResourceState.FINISHED, horizon=60)
    store._transition(client=store.client, keys=keys, args=args)  # the same call again, late
    assert store.state(g) == ResourceState.FINISHED


def test_a_claim_whose_reply_was_lost_still_lets_its_worker_run_the_action(cutter: ReplyCutter) -> None:
    store = Store(redis_client(cutter.url), "exp-faults", "run-3")
    store.add_pending([("a1", {"g": 1, "m": "start"}, store.now()), ("a2", {"g": 2, "m": "start"}, store.now())])
    assert store.claim("a1", "w1/n1", False) == "run"
    cutter.cut_next_reply()
    assert store.claim("a2", "w1/n2", False) == "run", "the replayed claim is its own, not another's"
    assert cutter.cuts == 1
    assert store.claim("a2", "w2/n3", False) == "suspect:w1/n2", "a claim by another token is not"


def test_a_guid_given_twice_or_a_replayed_join_counts_once_in_its_group(redis_server: EmbeddedRedis) -> None:
    store = Store(redis_client(redis_server.url), "exp-faults", "run-4")
    a, b = registered(store, 2)
    assert store.join_group(1, [a, a, b], True) == []
    assert store.join_group(1, [a, b], True) == [], "the replay adds nothing"
    assert store.client.hget(store.keys.group(1), "pending") == "2"
    store.transition(a, ResourceState.READY, horizon=60)
    woken = store.transition(b, ResourceState.READY, horizon=60).dispatch
    assert sorted(p["g"] for _, p, _ in woken) == [a, b], "the group's starts are released once both are READY"


def test_a_redis_stall_within_the_bound_is_ridden_out_and_every_rm_finishes() -> None:
    ec = ExperimentController(nthreads=10)
    try:
        assert ec._redis is not None
        guids = [ec.register_resource(Plain.get_rtype()) for _ in range(60)]
        for g in guids:
            ec.set(g, "runtime", 1.0)
        ec.deploy()
        ec.wait_started(guids[:1], timeout=30)
        os.kill(ec._redis.pid, signal.SIGSTOP)
        threading.Event().wait(4.0)
        os.kill(ec._redis.pid, signal.SIGCONT)
        ec.wait_finished(guids, timeout=60)
        assert [ec.state(g) for g in guids] == [ResourceState.FINISHED] * len(guids)
        assert not ec.abort
    finally:
        with contextlib.suppress(Exception):
            os.kill(ec._redis.pid, signal.SIGCONT)  # type: ignore[union-attr]
        ec.shutdown()


def test_a_stall_past_the_bound_reaches_the_user_as_a_typed_error_and_the_controller_goes_on(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEPI_DIST_REDIS_OUTAGE", "1.5")
    ec = ExperimentController(redis_url=redis_server.url, local_worker=False)
    try:
        g = ec.register_resource(Plain.get_rtype())
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(RedisUnavailableError) as caught:
                ec.state(g)
            assert not isinstance(caught.value, redis.RedisError)
            assert "NEPI_DIST_REDIS_OUTAGE" in str(caught.value)
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert ec.state(g) == ResourceState.NEW
    finally:
        ec.shutdown()


def test_a_redis_that_may_evict_keys_is_refused_before_anything_is_written(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(RedisConfigError, match="maxmemory-policy allkeys-lru"):
        ExperimentController(redis_url=redis_server.url, local_worker=False)
    assert client.dbsize() == 0
    client.config_set("maxmemory-policy", "noeviction")
    client.close()


def test_a_released_run_expires_after_the_retention_and_a_live_one_never(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEPI_DIST_RETENTION", "3600")
    url = redis_server.url
    live = ExperimentController(exp_id="exp-retention", run_id="live", redis_url=url, local_worker=False)
    done = ExperimentController(exp_id="exp-retention", run_id="done", redis_url=url, local_worker=True, nthreads=4)
    try:
        live.register_resource(Plain.get_rtype())
        g = done.register_resource(Plain.get_rtype())
        done.deploy()
        done.wait_finished([g], timeout=30)
    finally:
        done.shutdown()
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        released = sorted(client.scan_iter(match=Keys("exp-retention", "done").pattern()))
        kept = sorted(client.scan_iter(match=Keys("exp-retention", "live").pattern()))
        assert released and kept
        assert all(0 < client.ttl(k) <= 3600 for k in released), {k: client.ttl(k) for k in released}
        leases = {Keys("exp-retention", "live").keeper, Keys("exp-retention", "live").publishing}
        assert all(client.ttl(k) == -1 for k in kept if k not in leases), "a live run's keys never expire"
        assert client.zrange(RUNS_KEY, 0, -1) == ["exp-retention|live"]
        assert client.hget(Keys("exp-retention", "done").run, "released")
        assert done.state(g) == ResourceState.RELEASED, "the released run still answers reads"
    finally:
        client.close()
        live.shutdown()


def test_an_action_a_redis_stall_past_the_bound_cut_short_runs_again_once_redis_is_back(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = redis_server.url
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("NEPI_DIST_VISIBILITY_TIMEOUT", "4")
    monkeypatch.setenv("NEPI_DIST_REDIS_OUTAGE", "2")  # the worker's bound; the controller waits longer
    worker = start_worker_process(url, "cutshort", 4)
    monkeypatch.delenv("NEPI_DIST_REDIS_OUTAGE")
    ec = ExperimentController(redis_url=url, local_worker=False, celery_settings={"visibility_timeout": 4})
    try:
        wait_for_workers(url, 1)
        g = ec.register_resource(TwoStep.get_rtype())
        ec.set(g, "hold", 3.0)
        ec.set(g, "ledger", str(ledger))
        ec.deploy()
        ec.wait_started([g], timeout=30)
        assert ec.state(g) == ResourceState.STARTED, "the start's second step must still be ahead"
        os.kill(redis_server.pid, signal.SIGSTOP)  # set_finished() will wait past the worker's bound
        threading.Event().wait(8.0)
        os.kill(redis_server.pid, signal.SIGCONT)
        ec.wait_finished([g], timeout=40)
        assert ec.state(g) == ResourceState.FINISHED
        # Either the stalled set_finished() ran when Redis resumed (its command was in Redis'
        # socket buffer), and the resumed start found FINISHED; or it did not, and the resumed
        # start finished it.  Both are the action carried to its end once.
        runs = [line.split()[2] for line in ledger.read_text().splitlines()]
        assert runs in (["first"], ["first", "resumed"]), runs
        states = [int(f["s"]) for _, f in ec.store.client.xrange(ec.store.keys.events) if int(f["g"]) == g]
        assert states.count(ResourceState.STARTED) == 1 and states.count(ResourceState.FINISHED) == 1, states
        assert worker.poll() is None, "the worker survived the stall"
        # The cut-short claim goes: its message was not acked as done, a redelivery (after the
        # visibility timeout) takes the claim over and ends it.
        client, deadline = ec.store.client, time.monotonic() + 30
        while client.hgetall(ec.store.keys.running) and time.monotonic() < deadline:
            threading.Event().wait(0.2)
        assert not client.hgetall(ec.store.keys.running), "no claim is left behind"
    finally:
        with contextlib.suppress(OSError):
            os.kill(redis_server.pid, signal.SIGCONT)
        ec.shutdown()
        stop_process(worker)


def test_a_worker_refuses_a_redis_that_may_evict_keys_with_a_clear_message(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.config_set("maxmemory-policy", "volatile-lru")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nepi_dist.cli", "worker", "--redis-url", redis_server.url, "--concurrency", "2"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2
        assert "maxmemory-policy volatile-lru" in done.stderr and "noeviction" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


def test_a_controller_warns_when_its_redis_would_lose_writes_in_a_crash_and_not_when_it_fsyncs_always(
    redis_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for setting, warned in ((("appendonly", "no"), "no append-only file"),
                                (("appendfsync", "everysec"), "appendfsync everysec"),
                                (("appendfsync", "always"), None)):
            if setting[0] == "appendfsync":
                client.config_set("appendonly", "yes")
            client.config_set(*setting)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ExperimentController"):
                ExperimentController(redis_url=redis_server.url, local_worker=False).shutdown()
            found = [r.getMessage() for r in caplog.records if "Redis" in r.getMessage()]
            assert (warned is None and not found) or (warned is not None and any(warned in m for m in found)), found
    finally:
        client.config_set("appendonly", "no")
        client.close()
