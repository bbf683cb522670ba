"""Secrets never leak: canary values of Credential attributes, searched for in every channel.

One run on a private Redis with an external ``nepi-dist worker`` process at
log level DEBUG: a node on the test sshd whose ``identity`` (a key file that
is not there, so the connection fails and the error names it) and
``password`` are canaries, and a careless RM (tests/secret_rms.py) that logs
its Credential ``token`` and fails with it in the error.  Then the canaries
are searched for in:

* the worker's log (its stderr) and this process's log records (caplog);
* the run's event stream, read from Redis;
* every task message pushed to the broker, captured with MONITOR while the
  run goes (queues and kombu's ``unacked`` hash: headers, ``argsrepr``,
  ``kwargsrepr``, body);
* every key left in Redis after the shutdown, and the controller's snapshot;
* the RMs' error texts, and every file under HOME (run homes, results).

SSH host keys: verified by default (serverKey or known_hosts); turning it
off is explicit and logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.errors import AttributeValueError
from nepi_dist.model.secrets import MASK

from . import secret_rms  # noqa: F401  (registers SecretHolder here too)
from .conftest import ROOT, SSHServer, stop_process, wait_for_workers

CANARIES = {
    "identity": f"/nonexistent/canary-key-{os.urandom(4).hex()}",
    "password": f"canary-pw-{os.urandom(4).hex()}",
    "token": f"canary-token-{os.urandom(4).hex()}",
}


def found_in(text: str) -> list[str]:
    return [name for name, value in CANARIES.items() if value in text]


class Monitor:
    """Every command Redis runs, from MONITOR, while in the block."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.lines: list[str] = []
        self._monitor = self.client.monitor()
        self._monitor.connection.send_command("MONITOR")
        self._monitor.connection.read_response()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._stop = threading.Event()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines.append(self._monitor.next_command()["command"])
            except (redis.ConnectionError, OSError, ValueError):
                return

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.client.close()
        self._monitor.connection.disconnect()

    def messages(self) -> list[str]:
        """The task messages pushed to a queue or parked in kombu's unacked hash."""
        return [line for line in self.lines
                if (line.startswith(("LPUSH ", "RPUSH ")) and not line.split(" ", 2)[1].startswith("nepi:"))
                or line.startswith("HSET unacked ")]


def dump_redis(url: str) -> str:
    """Every key and value in the Redis, as one text."""
    client = redis.Redis.from_url(url, decode_responses=True)
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: object
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = client.get(key)
        parts.append(f"{key} {value}")
    client.close()
    return "\n".join(parts)


@pytest.fixture
def worker_log(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=redis_server.url)
        proc = subprocess.Popen(
            [os.sys.executable, "-m", "nepi_dist.cli", "worker", "--concurrency", "4", "--rm-module", "tests.rms",
             "--rm-module", "tests.secret_rms", "--loglevel", "DEBUG", "--hostname", "secrets@%h"],
            env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_workers(redis_server.url, 1, timeout=60)
            yield log
        finally:
            stop_process(proc)


def test_no_canary_reaches_a_log_the_events_a_message_a_snapshot_or_a_file(
        redis_server: EmbeddedRedis, worker_log: Path, sshd: SSHServer, caplog: pytest.LogCaptureFixture,
        _temporary_home: Path) -> None:
    url = redis_server.url
    caplog.set_level(logging.DEBUG)
    with Monitor(url) as monitor:
        ec = ExperimentController(redis_url=url, local_dir=str(_temporary_home / "runs"), persist=True)
        node = ec.register_resource("linux::Node")
        for name, value in dict(hostname="127.0.0.1", port=sshd.port, username=sshd.username,
                                serverKey=sshd.server_key, identity=CANARIES["identity"],
                                password=CANARIES["password"], critical=False, connectTimeout=3.0).items():
            ec.set(node, name, value)
        app = ec.register_resource("linux::Application")
        ec.set(app, "command", "echo hello")
        ec.set(app, "critical", False)
        ec.register_connection(app, node)
        holder = ec.register_resource("SecretHolder")
        ec.set(holder, "token", CANARIES["token"])
        ec.set(holder, "critical", False)
        local = ec.register_resource("linux::Node")
        local_app = ec.register_resource("linux::Application")
        ec.set(local_app, "command", "echo hello; env")
        ec.register_connection(local_app, local)
        collector = ec.register_resource("Collector")
        ec.set(collector, "resultsDir", str(_temporary_home / "results"))
        ec.register_connection(collector, local_app)
        ec.deploy()
        try:
            ec.wait_finished([node, app, holder, local_app], timeout=30)
        except Exception:
            print({g: (ec.state(g), ec.get_resource(g).error_message) for g in range(1, 7)})
            print(worker_log.read_text()[-5000:])
            raise
        assert ec.state(local_app) == ResourceState.FINISHED
        assert ec.state(node) == ResourceState.FAILED, "the canary key file does not exist: the login fails"
        assert ec.state(holder) == ResourceState.FAILED
        errors = {g: ec.get_resource(g).error_message or "" for g in (node, holder)}
        assert all(MASK in text for text in errors.values()), errors
        events = ec.store.client.xrange(ec.store.keys.events)
        serialized = ec.serialize() + ec.serialize("json")
        saved = Path(ec.save(_temporary_home / "saved.yaml")).read_text()
        ec.shutdown()
    assert ec.get(node, "identity") is None and ec.get(holder, "token") is None, "gone from the snapshot"

    worker_text = worker_log.read_text()
    assert "refused token" in worker_text and MASK in worker_text, "the careless RM's lines are in the log"
    assert found_in(worker_text) == []
    assert found_in(caplog.text) == []
    assert found_in(json.dumps(events)) == []
    assert found_in("\n".join(errors.values())) == []
    messages = monitor.messages()
    assert len(messages) >= 3 and all("argsrepr" in m for m in messages)
    assert found_in("\n".join(messages)) == []
    assert found_in(dump_redis(url)) == []
    assert found_in(json.dumps(ec.store._frozen, default=str)) == []
    files = [p for p in _temporary_home.rglob("*") if p.is_file()]
    assert any(p.parent.name == ec.run_id and p.name.endswith(".stdout") for p in files), "the results were saved"
    assert [str(p) for p in files if found_in(p.read_bytes().decode(errors="replace"))] == []
    out = subprocess.run([os.sys.executable, "-m", "nepi_dist.cli", "workers"], cwd=str(ROOT), text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url),
                         capture_output=True, check=True)
    assert found_in(out.stdout + out.stderr) == []
    assert found_in(serialized + saved) == [] and "hostname" in saved, "experiment files keep no credential"
    assert list((_temporary_home / "runs").rglob("*.yaml")), "the persisted description was written"

    again = ec.new_run()  # the next run of the same experiment still has its credentials (kept in memory)
    try:
        assert again.get(node, "identity") == CANARIES["identity"]
        assert again.get(holder, "token") == CANARIES["token"]
    finally:
        again.shutdown()


def test_a_credential_refused_by_its_type_is_not_shown_in_the_error(ec: ExperimentController) -> None:
    node = ec.register_resource("linux::Node")
    with pytest.raises(AttributeValueError) as info:
        ec.set(node, "password", 98765432101234)
    assert "98765432101234" not in str(info.value) and "credential" in str(info.value)


# -- SSH host keys ------------------------------------------------------------------


def ssh_node(ec: ExperimentController, sshd: SSHServer, **attrs: object) -> tuple[int, int]:
    node = ec.register_resource("linux::Node")
    for name, value in dict(hostname="127.0.0.1", port=sshd.port, username=sshd.username,
                            identity=sshd.identity, connectTimeout=5.0, **attrs).items():
        ec.set(node, name, value)
    app = ec.register_resource("linux::Application")
    ec.set(app, "command", "echo in")
    ec.register_connection(app, node)
    ec.deploy()
    ec.wait_finished(app, timeout=60)  # or the run aborts: the node is critical
    return node, app


def test_an_unknown_host_key_is_refused_by_default(ec: ExperimentController, sshd: SSHServer,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEPI_DIST_KNOWN_HOSTS", str(tmp_path / "empty_known_hosts"))
    (tmp_path / "empty_known_hosts").write_text("")
    node, app = ssh_node(ec, sshd)
    assert ec.state(node) == ResourceState.FAILED
    assert "unknown host key" in (ec.get_resource(node).error_message or "")
    assert ec.state(app) != ResourceState.FINISHED


def test_a_host_key_other_than_the_server_key_is_refused(ec: ExperimentController, sshd: SSHServer,
                                                         tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    node, _ = ssh_node(ec, sshd, serverKey=wrong)
    assert ec.state(node) == ResourceState.FAILED
    assert "not the one expected" in (ec.get_resource(node).error_message or "")


def test_a_host_in_known_hosts_is_accepted(ec: ExperimentController, sshd: SSHServer,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.server_key}\n")
    monkeypatch.setenv("NEPI_DIST_KNOWN_HOSTS", str(known))
    _, app = ssh_node(ec, sshd)
    assert ec.state(app) == ResourceState.FINISHED and ec.trace(app, "stdout") == "in\n"


def test_turning_the_host_key_check_off_is_explicit_and_logged(
        ec: ExperimentController, sshd: SSHServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nepi_dist.resources.linux.shell"):
        _, app = ssh_node(ec, sshd, hostKeyCheck=False)
    assert ec.state(app) == ResourceState.FINISHED
    assert any("NOT verified" in r.getMessage() for r in caplog.records)
