"""Fixtures: every test gets real Redis servers and real Celery workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from nepi_dist import ExperimentController
from nepi_dist.engine.embedded import EmbeddedRedis

from . import rms  # noqa: F401  (registers the test RM types in this process)

ROOT = Path(__file__).resolve().parent.parent


W = TypeVar("W")

#: Test files that run alone (``make test`` runs the serial tests after the parallel ones):
#: the chaos suite kills and pauses processes and counts late actions.
SERIAL_DIRS = (ROOT / "tests" / "chaos",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark serial the chaos suite and the ``slow`` scenarios (hundreds of resources: they take the CPU)."""
    for item in items:
        if any(item.path.is_relative_to(d) for d in SERIAL_DIRS) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.serial)


@contextlib.contextmanager
def connected(signal: Any, watcher: W) -> Iterator[W]:
    """Keep ``watcher`` connected to a Celery ``signal`` (in-process workers) while in the block."""
    signal.connect(watcher, weak=False)
    try:
        yield watcher
    finally:
        signal.disconnect(watcher)


@pytest.fixture(autouse=True, scope="session")
def _temporary_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run the whole session with HOME in a temporary folder, never the user's.

    Set in this process's environment, so in-process workers (the embedded
    default) and every worker subprocess the tests start inherit it: a
    localhost node's ``${HOME}/nepi-usr`` and ``${HOME}/nepi-exp`` land there.
    The test sshd sets it for its sessions too (``SetEnv``, see SSHServer).
    """
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        yield home


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
    from nepi_dist.engine.celery_app import create_app

    app = create_app(url)
    import time

    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=0.5) or []
            if len(replies) >= count:
                return
    finally:
        app.close()
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


class SSHServer:
    """A real sshd on 127.0.0.1 with keys generated for the test session."""

    def __init__(self, workdir: Path, home: Path) -> None:
        from nepi_dist.engine.embedded import free_port

        self.dir = workdir
        self.port = free_port()
        self.identity = str(workdir / "id_ed25519")
        host_key = workdir / "host_ed25519"
        for key in (self.identity, str(host_key)):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        (workdir / "authorized_keys").write_text(Path(self.identity + ".pub").read_text())
        self.server_key = " ".join(Path(str(host_key) + ".pub").read_text().split()[:2])
        config = workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {workdir}/authorized_keys\nPidFile {workdir}/sshd.pid\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "Subsystem sftp internal-sftp\nUsePAM no\nStrictModes no\nMaxSessions 200\n"
            "MaxStartups 100:30:200\nLogLevel ERROR\n"
            # A login's HOME comes from the passwd entry (the real home): keep the tests out of it.
            f"SetEnv HOME={home}\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)
        sshd = "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)])
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sshd did not start") from None
                time.sleep(0.05)
        self.username = os.environ.get("USER") or __import__("getpass").getuser()

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, _temporary_home: Path) -> Iterator[SSHServer]:
    """A real sshd on a free high port of 127.0.0.1, for the whole session (HOME: the session's)."""
    server = SSHServer(tmp_path_factory.mktemp("sshd"), _temporary_home)
    try:
        yield server
    finally:
        server.stop()
