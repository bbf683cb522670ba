"""Batch messages: actions due together on one queue share Celery messages, and each runs once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import signals

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.batch import BATCH_MAX, BATCH_SPREAD, BATCH_TASK, BUFFER_SPREAD, batches
from nepi_dist.engine.context import ACTION_TASK, RunContext
from nepi_dist.engine.routing import POOL_QUEUE
from nepi_dist.engine.store import OUTBOX_LEASE

from .conftest import connected
from .test_pitfalls import TICKER, runs_of, ticks, ticks_key


class Received:
    """Counts the Celery messages the in-process worker ran, by task name, and batch results."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.names: Counter[str] = Counter()
        self.batch_results: list[dict[str, int]] = []

    def __call__(self, sender: Any = None, retval: Any = None, **_: Any) -> None:
        name = getattr(sender, "name", None)
        with self.lock:
            self.names[str(name)] += 1
            if name == BATCH_TASK:
                self.batch_results.append(dict(retval or {}))
            self.lock.notify_all()

    def wait_batches(self, count: int, timeout: float = 15.0) -> list[dict[str, int]]:
        with self.lock:
            self.lock.wait_for(lambda: len(self.batch_results) >= count, timeout)
            return list(self.batch_results)


@pytest.fixture
def received() -> Iterator[Received]:
    with connected(signals.task_postrun, Received()) as watcher:
        yield watcher


def _items(n: int, guid: int = 1, due: float = 100.0) -> list[tuple[str, dict[str, Any], float]]:
    return [(f"a{i}", {"g": guid, "m": "tick"}, due) for i in range(n)]


def test_few_actions_travel_one_per_message() -> None:
    chunks = list(batches(_items(2 * BATCH_SPREAD - 1), lambda g: POOL_QUEUE))
    assert [len(c) for _, _, c in chunks] == [1] * (2 * BATCH_SPREAD - 1)


def test_many_actions_share_messages_yet_spread_over_at_least_the_spread() -> None:
    chunks = list(batches(_items(2 * BATCH_SPREAD), lambda g: POOL_QUEUE))
    assert len(chunks) == BATCH_SPREAD and {len(c) for _, _, c in chunks} == {2}
    chunks = list(batches(_items(10_000), lambda g: POOL_QUEUE))
    assert max(len(c) for _, _, c in chunks) == BATCH_MAX
    assert sum(len(c) for _, _, c in chunks) == 10_000
    assert [aid for _, _, c in chunks for aid, _, _ in c] == [f"a{i}" for i in range(10_000)]


def test_a_batch_never_mixes_queues_or_due_times() -> None:
    items = _items(100, guid=1, due=5.0) + _items(100, guid=2, due=5.0) + _items(100, guid=1, due=6.0)
    chunks = list(batches(items, lambda g: f"q{g}"))
    for queue, due, chunk in chunks:
        assert {(f"q{p['g']}", d) for _, p, d in chunk} == {(queue, due)}
    assert sum(len(c) for _, _, c in chunks) == 300


def test_a_large_deployment_travels_in_batches_and_every_rm_is_deployed_and_started(
    ec: ExperimentController, received: Received
) -> None:
    n = 300
    guids = [ec.register_resource("Plain") for _ in range(n)]
    ec.deploy()
    ec.wait_started(guids, timeout=60)
    assert all(ec.state(g) in (ResourceState.STARTED, ResourceState.FINISHED) for g in guids)
    with received.lock:
        names = dict(received.names)
    # The n deploys travel in n // (n // BATCH_SPREAD) batch messages; the starts the group
    # releases, and the finishes, travel in the send buffers of the batches that made them.
    assert names.get(BATCH_TASK, 0) >= BATCH_SPREAD, names
    assert names.get(BATCH_TASK, 0) + names.get(ACTION_TASK, 0) < n, names


def test_what_a_batch_sends_is_kept_in_the_outbox_and_published_later_if_its_publish_fails(
    ec: ExperimentController, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed: list[int] = []
    real = RunContext._dispatch

    def flaky(self: RunContext, items: Any, from_outbox: bool, spread: int = BATCH_SPREAD) -> None:
        if spread == BUFFER_SPREAD and not failed:
            failed.append(len(items))
            raise redis.ConnectionError("broker unreachable (injected)")
        real(self, items, from_outbox, spread)

    monkeypatch.setattr(RunContext, "_dispatch", flaky)
    n = 2 * BATCH_SPREAD
    guids = [ec.register_resource("Plain") for _ in range(n)]
    ec.deploy()
    # The failure manager re-publishes the lost sends once the publisher's lease ran out.
    ec.wait_finished(guids, timeout=OUTBOX_LEASE + 20)
    assert failed and failed[0] >= 1
    assert all(ec.state(g) == ResourceState.FINISHED for g in guids)
    assert ec.store.client.hlen(ec.store.keys.outbox) == 0


def _deliver_batch(ec: ExperimentController, items: list[Any], task_id: str) -> None:
    ec.app.send_task(BATCH_TASK, args=[ec.exp_id, ec.run_id, items], task_id=task_id, queue=POOL_QUEUE)


def test_a_batch_delivered_twice_runs_each_of_its_actions_once(
    ec: ExperimentController, received: Received
) -> None:
    guids = [ec.register_resource(TICKER) for _ in range(3)]
    aids = [f"batch-{g}" for g in guids]
    ec.store.add_pending([(aid, {"g": g, "m": "tick"}, ec.store.now()) for aid, g in zip(aids, guids, strict=True)])
    items = [[aid, {"g": g, "m": "tick"}] for aid, g in zip(aids, guids, strict=True)]
    _deliver_batch(ec, items, "twice-1")
    _deliver_batch(ec, items, "twice-2")  # the broker's redelivery
    results = received.wait_batches(2)
    # The copies run side by side, each item with its own claim: which copy wins an item's
    # claim is a race, but each action is done by exactly one of them and skipped by the other.
    assert all(sum(r.values()) == 3 for r in results), results
    assert sum(r.get("done", 0) for r in results) == 3, results
    assert {v for r in results for v in r} <= {"done", "skip:running", "skip:done"}, results
    assert ticks(ec) == 3
    assert all(len(runs_of(ec, g)) == 1 for g in guids)
    assert all(ec.state(g) == ResourceState.FINISHED for g in guids)


def test_a_malformed_batch_item_is_refused_and_the_others_still_run(
    ec: ExperimentController, received: Received
) -> None:
    good = ec.register_resource(TICKER)
    ec.store.add_pending([("batch-good", {"g": good, "m": "tick"}, ec.store.now())])
    _deliver_batch(ec, [["batch-good", {"g": good, "m": "tick"}], "not an item", [1, 2, 3]], "malformed")
    assert received.wait_batches(1) == [{"done": 1}]
    assert ec.store.client.get(ticks_key(ec.store.keys)) == "1"
    assert ec.state(good) == ResourceState.FINISHED
