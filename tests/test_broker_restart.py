"""A worker rides out its Redis going away: killed and restarted from its AOF, paused, or not there yet.

The crash this guards against (issue 9, item 1): a ``nepi-dist worker`` in the
middle of a run (waiting in BRPOP, holding unacknowledged ETA messages) whose
Redis is SIGKILLed exited with ``Unrecoverable error: AttributeError("'NoneType'
object has no attribute 'hostname'")``.  The cause is in kombu's Redis channel
(see :class:`nepi_dist.engine.celery_app._RedisChannel`); the first two tests show it on
kombu alone, the others on real worker processes.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.common import ignore_errors
from kombu.exceptions import OperationalError

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.celery_app import REDIS_TRANSPORT, create_app
from nepi_dist.engine.context import ACTION_TASK
from nepi_dist.engine.embedded import EmbeddedRedis, free_port
from nepi_dist.engine.routing import POOL_QUEUE

from .conftest import start_worker_process, stop_process, wait_for_workers


def close_like_celery_after_redis_died(transport: str | None) -> BaseException | None:
    """Put a kombu connection where a busy worker's is, kill Redis, close it as Celery does.

    The connection's default channel consumes a queue and holds one
    unacknowledged message, a second channel consumes a fanout queue (Celery's
    remote-control channel), and a BRPOP is outstanding.  Then Redis is
    SIGKILLed and the connection is collected and closed, the two steps of
    Celery's ``Consumer.on_connection_error_after_connected``.  Returns what the
    close raised past ``ignore_errors`` (which swallows connection errors).
    """
    server = EmbeddedRedis().start()
    try:
        conn = Connection(server.url, transport=transport)
        channel = conn.default_channel
        work = Queue("restart.work", Exchange("restart.work", "direct"), "restart.work")
        Producer(channel).publish({"n": 1}, exchange=work.exchange, routing_key="restart.work", declare=[work])
        held: list[Any] = []
        Consumer(channel, [work], callbacks=[lambda body, message: held.append(message)], accept=["json"]).consume()
        control = conn.channel()
        fanout = Queue("restart.control", Exchange("restart.control", "fanout"), auto_delete=True)
        Consumer(control, [fanout], callbacks=[lambda body, message: None], accept=["json"], no_ack=True).consume()
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)
        assert held, "the message never arrived"
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)  # nothing more: leaves the BRPOP outstanding
        assert channel._in_poll and len(channel.qos._delivered) == 1, "not the state of a busy worker"
        server.send_signal(signal.SIGKILL)
        ignore_errors(conn, conn.collect, socket_timeout=5)
        try:
            ignore_errors(conn, conn.close)
        except Exception as exc:
            return exc
        return None
    finally:
        server.stop()


def test_stock_kombu_crashes_closing_a_busy_connection_whose_redis_died() -> None:
    """The root cause, on kombu 5.7's own Redis transport (when this fails, kombu fixed it:
    ``nepi_dist.engine.celery_app.RedisTransport`` can go)."""
    raised = close_like_celery_after_redis_died(None)
    assert isinstance(raised, AttributeError) and "hostname" in str(raised), raised


def test_nepi_transport_closes_a_busy_connection_whose_redis_died() -> None:
    assert close_like_celery_after_redis_died(REDIS_TRANSPORT) is None


def test_workers_retry_their_broker_for_ever_with_backoff() -> None:
    conf = create_app("redis://127.0.0.1:1/0").conf
    assert conf.broker_connection_retry is True
    assert conf.broker_connection_retry_on_startup is True
    assert conf.broker_connection_max_retries is None  # kombu: None retries for ever, 0 not at all
    assert conf.broker_transport == REDIS_TRANSPORT


def hold_eta_messages(url: str, count: int, ahead: float = 120.0) -> None:
    """Publish ``count`` actions due ``ahead`` seconds from now: a worker holds them unacknowledged."""
    app = create_app(url)
    eta = datetime.datetime.fromtimestamp(time.time() + ahead, tz=datetime.UTC)
    try:
        with app.producer_or_acquire() as producer:
            for i in range(count):
                payload = {"g": 1, "m": "deploy"}
                message = app.amqp.create_task_message(
                    f"held-{i}", ACTION_TASK, ["exp-held", "run-held", f"held-{i}", payload], {}, eta=eta)
                producer.publish(message.body, exchange="", routing_key=POOL_QUEUE, serializer="json",
                                 headers=message.headers, **message.properties)
    finally:
        app.close()


def answers_a_ping(url: str, worker: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
    """Block until ``worker`` (a process serving ``url``) answers a ping; fail as soon as it exits.

    The pings' kombu connections are pooled per process: after a restart of
    Redis the first use of a pooled one fails, and the next gets a fresh one.
    """
    app = create_app(url)
    errors = (*app.connection_for_write().connection_errors, OperationalError)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise AssertionError(f"the worker exited (status {worker.returncode})")
            try:
                if app.control.ping(timeout=0.5):
                    return
            except errors:
                time.sleep(0.2)
    finally:
        app.close()
    raise AssertionError(f"no worker answered a ping on {url} within {timeout}s")


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.1)


def a_run_finishes(url: str, count: int = 5) -> None:
    """A new run on ``url``, served by external workers only, deploys and finishes."""
    ec = ExperimentController(redis_url=url, local_worker=False)
    try:
        guids = [ec.register_resource("Plain") for _ in range(count)]
        ec.deploy()
        ec.wait_finished(guids, timeout=60)
        assert [ec.state(g) for g in guids] == [ResourceState.FINISHED] * count
    finally:
        ec.shutdown()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[list[EmbeddedRedis]]:
    """A redis-server with an append-only file in ``tmp_path``; the list holds the one running now."""
    servers = [EmbeddedRedis(persist_dir=str(tmp_path), appendonly=True).start()]
    try:
        yield servers
    finally:
        servers[-1].stop()


def test_a_worker_survives_redis_restarts_from_its_aof_and_a_stall_and_serves_a_new_run_after(
    aof_redis: list[EmbeddedRedis], tmp_path: Path,
) -> None:
    first = aof_redis[0]
    url = first.url
    worker = start_worker_process(url, "restart", 8)
    try:
        wait_for_workers(url, 1)
        hold_eta_messages(url, 20)
        client = redis.Redis.from_url(url, decode_responses=True)
        wait_for(lambda: client.hlen("unacked") == 20, 10, "the worker did not hold the 20 ETA messages")
        client.close()
        for _ in range(3):
            aof_redis[-1].send_signal(signal.SIGKILL)
            time.sleep(2)
            aof_redis.append(EmbeddedRedis(port=first.port, persist_dir=str(tmp_path), appendonly=True).start())
            answers_a_ping(url, worker)
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.hlen("unacked") == 20, "the held messages did not survive in the AOF"
        client.close()
        aof_redis[-1].send_signal(signal.SIGSTOP)
        time.sleep(10)
        aof_redis[-1].send_signal(signal.SIGCONT)
        answers_a_ping(url, worker)
        a_run_finishes(url)
    finally:
        stop_process(worker)


def test_a_worker_started_before_its_redis_waits_for_it_and_then_serves() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = start_worker_process(url, "early", 4)
    server: EmbeddedRedis | None = None
    try:
        time.sleep(5)  # two connection attempts refused
        assert worker.poll() is None, "the worker gave up on a Redis that is not there yet"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "something already listens on the port"
        server = EmbeddedRedis(port=port).start()
        answers_a_ping(url, worker)
        a_run_finishes(url)
    finally:
        stop_process(worker)
        if server is not None:
            server.stop()
