"""The chaos harness itself: its counting, and its Redis that comes back from its AOF on the same port."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .harness import Due, Entry, Figures, Outcome, RedisProcess, figures


def run(g: int, t: float, pid: int = 1, action: str = "start") -> Entry:
    return Entry(g, action, "run", t, pid)


def effect(g: int, t: float, pid: int = 1, action: str = "start") -> Entry:
    return Entry(g, action, "effect", t, pid)


def test_figures_count_an_action_that_never_took_effect_as_lost_and_one_that_took_effect_twice_as_duplicated(
) -> None:
    entries = [run(1, 10.0), effect(1, 10.0), run(2, 10.0), run(3, 10.0), effect(3, 10.0), effect(3, 10.5, pid=2)]
    fig = figures(entries, [Due(1, "start", 10.0), Due(2, "start", 10.0), Due(3, "start", 10.0)], tolerance=1.0)
    assert fig.lost == [(2, "start")]
    assert fig.duplicated == [(3, "start")]
    assert fig.late == []


def test_figures_count_a_body_begun_again_while_the_first_ones_process_lived_as_duplicated_but_not_after_it_died(
) -> None:
    entries = [run(1, 10.0, pid=7), effect(1, 10.0, pid=7), run(1, 20.0, pid=8),
               run(2, 10.0, pid=5), effect(2, 10.0, pid=5), run(2, 12.0, pid=9)]
    expected = [Due(1, "start", 10.0), Due(2, "start", 10.0)]
    assert figures(entries, expected, 1.0, died={7: 11.0}).duplicated == [(2, "start")]
    assert figures(entries, expected, 1.0, died={}).duplicated == [(1, "start"), (2, "start")]


def test_figures_count_late_from_the_due_time_or_from_the_faults_end_when_the_fault_held_it_up() -> None:
    # The fault lasts from 25 to 30: 1 was late before it, 2 was held up by it, 3 came due after it.
    entries = [effect(1, 14.0), effect(2, 31.5), effect(3, 40.0), effect(4, 31.0)]
    expected = [Due(1, "start", 12.5), Due(2, "start", 26.0), Due(3, "start", 38.0), Due(4, "start", 24.5)]
    fig = figures(entries, expected, tolerance=1.0, fault=(25.0, 30.0))
    assert sorted(k for k, _ in fig.late) == [(1, "start"), (2, "start"), (3, "start")]
    fig = figures(entries, expected, tolerance=2.0, fault=(25.0, 30.0))
    assert fig.late == []
    assert fig.recovery == pytest.approx(2.0)
    assert fig.worst_delay == pytest.approx(6.5)
    assert [k for k, _ in figures(entries, expected, tolerance=2.0).late] == [(2, "start"), (4, "start")]


def test_an_outcome_counts_an_rm_not_finished_and_says_why_it_failed_as_a_problem() -> None:
    fine = Outcome([], Figures(), Counter(FINISHED=3), rms=3, failures=[])
    assert fine.problems() == []
    failed = Outcome([], Figures(lost=[(2, "start")]), Counter(FINISHED=2, FAILED=1), rms=3, failures=["boom"])
    assert failed.problems() == ["1 actions never took effect, e.g. [(2, 'start')]",
                                 "not every RM ended FINISHED: {'FINISHED': 2, 'FAILED': 1}; FAILED with ['boom']"]
    assert Outcome([], Figures(), Counter(FINISHED=2, missing=1), rms=3, failures=[]).problems() == [
        "not every RM ended FINISHED: {'FINISHED': 2, 'missing': 1}"]


def test_the_harness_redis_comes_back_from_its_aof_on_the_same_port_and_answers_nothing_while_stopped(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    port = server.port
    try:
        with redis.Redis(port=port, decode_responses=True) as client:
            client.set("chaos:kept", "1")
        time.sleep(1.5)  # appendfsync everysec: on disk after at most about a second
        server.kill()
        server.restart()
        assert server.port == port
        with redis.Redis(port=port, decode_responses=True) as client:
            assert client.get("chaos:kept") == "1"
        server.stop()
        once = Retry(NoBackoff(), 0)  # redis-py 8 retries a timeout 10 times by default
        with redis.Redis(port=port, socket_timeout=0.5, retry=once) as client, pytest.raises(redis.TimeoutError):
            client.ping()
        server.cont()
        with redis.Redis(port=port, socket_timeout=2.0) as client:
            assert client.ping()
    finally:
        server.close()
