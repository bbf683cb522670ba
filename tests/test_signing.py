"""Signed actions: with ``NEPI_DIST_SIGNING_KEY`` set, a worker runs only messages signed with it.

A run on a private Redis with an external ``nepi-dist worker`` process, both
given the key.  Real forged messages are pushed to the broker (Celery's own
message format, published with kombu to the worker's queue): unsigned,
signed with another key, signed then changed (the guid, the ETA, the task
name), signed for another queue, and a signed one pushed twice.  Each
targets an application that is registered and never deployed: had any
run, it would have left NEW.  The worker refuses each, records it in the
run's event stream and its log, and runs nothing.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.context import ACTION_TASK, READ_TASK
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.routing import POOL_QUEUE
from nepi_dist.engine.signing import REFUSED_GUID, SIGNING_KEY_ENV, sign, signing_key
from nepi_dist.errors import SigningKeyError

from .conftest import ROOT, stop_process, wait_for_workers

KEY = "k-" + os.urandom(16).hex()


@pytest.fixture
def signed_worker(redis_server: EmbeddedRedis, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=redis_server.url)
        proc = subprocess.Popen(
            [os.sys.executable, "-m", "nepi_dist.cli", "worker", "--concurrency", "4", "--rm-module", "tests.rms",
             "--hostname", "signed@%h"], env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_workers(redis_server.url, 1, timeout=60)
            yield redis_server.url, log
        finally:
            stop_process(proc)


def push(ec: ExperimentController, args: list[Any], *, key: bytes | None, queue: str = POOL_QUEUE,
         signed_queue: str | None = None, task: str = ACTION_TASK, change: Any = None,
         eta: datetime.datetime | None = None) -> dict[str, Any]:
    """Publish one Celery message to ``queue``, signed with ``key`` (None: unsigned); return its headers.

    ``change(headers, body)`` alters the message after it was signed.
    """
    app = ec._app
    message = app.amqp.create_task_message(f"forged-{os.urandom(4).hex()}", task, args, {}, eta=eta)
    headers, body = dict(message.headers), message.body
    if key is not None:
        sign(key, headers, body, signed_queue or queue)
    if change is not None:
        body = change(headers, body) or body
    with app.producer_or_acquire() as producer:
        producer.publish(body, exchange="", routing_key=queue, serializer="json", headers=headers,
                         **message.properties)
    return headers


def refusals(ec: ExperimentController, count: int, timeout: float = 30) -> list[dict[str, str]]:
    """Wait until the run's event stream holds ``count`` refusals; return them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [f for _, f in ec.store.client.xrange(ec.store.keys.events) if int(f["g"]) == REFUSED_GUID]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_signed_run_goes_through_and_forged_messages_run_nothing(signed_worker: tuple[str, Path]) -> None:
    url, log = signed_worker
    ec = ExperimentController(redis_url=url)
    try:
        plains = [ec.register_resource("Plain") for _ in range(5)]
        target = ec.register_resource("Plain")  # never deployed: any action run on it shows
        ec.deploy(plains)
        ec.wait_finished(plains, timeout=60)
        assert all(ec.state(g) == ResourceState.FINISHED for g in plains), "signed actions run"
        assert refusals(ec, 0) == []

        def deploy_of(guid: int) -> list[Any]:
            return [ec.exp_id, ec.run_id, f"forged-{os.urandom(3).hex()}", {"g": guid, "m": "deploy"}]

        wrong = b"another-key-" + os.urandom(8)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)

        def other_guid(_headers: dict[str, Any], body: Any) -> Any:
            args, kwargs, embed = body
            return ([*args[:3], {"g": target, "m": "start"}], kwargs, embed)

        def sooner(headers: dict[str, Any], _body: Any) -> None:
            headers["eta"] = datetime.datetime.now(datetime.UTC).isoformat()

        def renamed(headers: dict[str, Any], _body: Any) -> None:
            headers["task"] = READ_TASK

        key = signing_key(KEY)
        assert key is not None
        push(ec, deploy_of(target), key=None)  # unsigned
        push(ec, deploy_of(target), key=wrong)  # another key
        push(ec, deploy_of(plains[0]), key=key, change=other_guid)  # signed, then its body changed
        push(ec, deploy_of(target), key=key, eta=later + datetime.timedelta(days=1), change=sooner)  # ETA changed
        push(ec, deploy_of(target), key=key, task=ACTION_TASK, change=renamed)  # task name changed
        push(ec, deploy_of(target), key=key, signed_queue="nepi.host.elsewhere")  # moved to another queue
        found = refusals(ec, 6)
        reasons = sorted(f["refused"] for f in found)
        assert reasons == ["forged", "forged", "forged", "forged",
                           "moved from queue nepi.host.elsewhere to nepi.pool", "unsigned"], reasons
        assert ec.state(target) == ResourceState.NEW, "no forged message ran"

        # A signed message pushed twice: the second is a replay.
        aid = f"legit-{os.urandom(3).hex()}"
        replayed_args = [ec.exp_id, ec.run_id, aid, {"g": target, "m": "deploy"}]
        app = ec._app
        ec.store.add_pending([(aid, replayed_args[3], ec.store.now())])  # decided, as the controller's deploy does
        message = app.amqp.create_task_message(f"t-{aid}", ACTION_TASK, replayed_args, {})
        headers = dict(message.headers)
        sign(key, headers, message.body, POOL_QUEUE)
        for _ in range(2):
            with app.producer_or_acquire() as producer:
                producer.publish(message.body, exchange="", routing_key=POOL_QUEUE, serializer="json",
                                 headers=headers, **message.properties)
            time.sleep(1.0)
        found = refusals(ec, 7)
        assert [f["refused"] for f in found].count("replayed") == 1
        assert ec.state(target) >= ResourceState.READY, "the first, signed delivery ran"
    finally:
        ec.shutdown()
    text = log.read_text()
    assert text.count("REFUSED") >= 7 and "nothing ran" in text


def test_an_unsigned_worker_message_is_refused_by_an_embedded_worker_with_the_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    ec = ExperimentController()
    try:
        a = ec.register_resource("Plain")
        b = ec.register_resource("Plain")
        ec.deploy([a])
        ec.wait_finished([a], timeout=30)
        push(ec, [ec.exp_id, ec.run_id, "forged-x", {"g": b, "m": "deploy"}], key=None)
        assert [f["refused"] for f in refusals(ec, 1)] == ["unsigned"]
        assert ec.state(b) == ResourceState.NEW
    finally:
        ec.shutdown()


def test_a_short_signing_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "short")
    with pytest.raises(SigningKeyError, match=SIGNING_KEY_ENV):
        ExperimentController(redis_url="redis://127.0.0.1:1/0")
