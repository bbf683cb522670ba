"""Fixtures of the chaos suite: a cluster of real processes, removed even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import tests.chaos_rms  # noqa: F401  (registers the chaos RM types in this process, for its controllers)

from .harness import CHAOS_ENV, Cluster, Scenario


@pytest.fixture
def chaos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controllers of this process use the chaos suite's visibility timeout and ETA horizon."""
    for name, value in CHAOS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def cluster(chaos_env: None) -> Iterator[Cluster]:
    """A private AOF Redis, its workers and controllers (nothing started yet); all killed afterwards."""
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def scenario(cluster: Cluster, record_property: Callable[[str, object], None]) -> Scenario:
    """The bookkeeping of the test's scenario on ``cluster``: its figures become the test's recorded properties."""
    return Scenario(cluster, record_property)
