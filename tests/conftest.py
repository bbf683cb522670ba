"""Fixtures: every test gets real Redis servers and real Celery workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nepi_dist import ExperimentController
from nepi_dist.embedded import EmbeddedRedis

from . import rms  # noqa: F401  (registers the test RM types in this process)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_external_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their Redis explicitly; the environment's is ignored."""
    monkeypatch.delenv("NEPI_DIST_REDIS_URL", raising=False)


@pytest.fixture
def ec() -> Iterator[ExperimentController]:
    """A controller on the embedded default (private Redis, in-process worker)."""
    controller = ExperimentController(nthreads=20)
    try:
        yield controller
    finally:
        if not controller.store.frozen:
            controller.shutdown()


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server on a free port, for one test."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


def start_worker_process(url: str, name: str, concurrency: int = 8, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``nepi-dist worker`` as a separate process serving ``url``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url)
    cmd = [
        sys.executable, "-m", "nepi_dist.cli", "worker",
        "--concurrency", str(concurrency),
        "--rm-module", "tests.rms",
        "--hostname", f"{name}@%h",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, cwd=str(ROOT))


def wait_for_workers(url: str, count: int, timeout: float = 30.0) -> None:
    """Block until ``count`` Celery workers answer a ping on ``url``."""
    from nepi_dist.app import create_app

    app = create_app(url)
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        if len(replies) >= count:
            return
    raise RuntimeError(f"fewer than {count} workers answered on {url}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def two_workers(redis_server: EmbeddedRedis) -> Iterator[str]:
    """Two external worker processes on a private Redis; yields its URL."""
    procs = [start_worker_process(redis_server.url, f"w{i}") for i in (1, 2)]
    try:
        wait_for_workers(redis_server.url, 2)
        yield redis_server.url
    finally:
        for p in procs:
            stop_process(p)


def keys_of(url: str, pattern: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    return sorted(client.scan_iter(match=pattern))
