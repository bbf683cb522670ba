"""Least privilege: whole experiments run with exactly the documented Redis ACLs, and one
experiment's controller cannot read or change another's keys.

A real redis-server 7 (Debian's: key permissions ``%R~`` need 7.0) with the
users of :mod:`nepi_dist.engine.acl`; an external ``nepi-dist worker`` as
``nepi-worker``, a controller per experiment limited to its keys.  Redis'
``ACL LOG`` must stay empty: nothing the roles did was refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nepi_dist import ExperimentController, FailureLevel, ResourceAction, ResourceState
from nepi_dist.engine.acl import controller_rules, setuser, worker_rules
from nepi_dist.engine.embedded import free_port
from nepi_dist.engine.store import Store
from nepi_dist.errors import RedisAuthError

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .tlsredis import tls_redis_binary

ADMIN_PASSWORD = "admin-" + os.urandom(6).hex()


class AclRedis:
    """A redis-server 7 whose default user needs a password, with the nepi_dist roles' users."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [tls_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--logfile", str(directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        redis.Redis(port=self.port).execute_command("ACL", "SETUSER", "default", f">{ADMIN_PASSWORD}")
        self.admin = redis.Redis(port=self.port, password=ADMIN_PASSWORD, decode_responses=True)
        self.passwords: dict[str, str] = {}

    def add_user(self, user: str, rules: list[str]) -> str:
        """Create ``user`` with ``rules``; return its URL."""
        password = os.urandom(8).hex()
        self.admin.execute_command("ACL", "SETUSER", *setuser(user, password, rules))
        self.passwords[user] = password
        return self.url(user)

    def url(self, user: str | None = None) -> str:
        if user is None:
            return f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0"
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def refusals(self) -> list[dict[str, str]]:
        entries = self.admin.execute_command("ACL", "LOG", "128")
        return [e if isinstance(e, dict) else dict(zip(e[::2], e[1::2], strict=True)) for e in entries]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def acl_worker(acl_redis: AclRedis) -> Iterator[str]:
    """An external worker as the user nepi-worker, serving the pool and host h-acl."""
    url = acl_redis.add_user("nepi-worker", worker_rules())
    proc = start_worker_process(url, "acl", 4, "--host", "h-acl", "--pool-queue")
    try:
        wait_for_workers(acl_redis.url(), 1, timeout=60)
        yield url
    finally:
        stop_process(proc)


def run_experiment(url: str, exp_id: str) -> ExperimentController:
    """A run that uses every kind of access: a host worker's application and trace, a delayed
    condition, a tracked task; then shut down."""
    ec = ExperimentController(exp_id=exp_id, redis_url=url)
    node = ec.register_resource("linux::Node")
    ec.set(node, "worker", "h-acl")
    app = ec.register_resource("linux::Application")
    ec.set(app, "command", "echo acl")
    ec.register_connection(app, node)
    plains = [ec.register_resource("Plain") for _ in range(5)]
    ec.register_condition(plains[1], ResourceAction.START, plains[0], ResourceState.STARTED, "0.5s")
    ec.deploy()
    ec.wait_finished([app, *plains], timeout=60)
    assert ec.state(app) == ResourceState.FINISHED and ec.trace(app, "stdout") == "acl\n"
    assert all(ec.state(g) == ResourceState.FINISHED for g in plains)
    ec.shutdown()
    return ec


def test_an_experiment_and_an_abort_run_with_exactly_the_documented_users(
        acl_redis: AclRedis, acl_worker: str) -> None:
    exp_id = "acl-one"
    url = acl_redis.add_user("nepi-controller", controller_rules(exp_id))
    run_experiment(url, exp_id)
    ec = ExperimentController(exp_id=exp_id, redis_url=url)  # a second run: an abort revokes
    node = ec.register_resource("Node")
    apps = [ec.register_resource("ErrorApplication") for _ in range(3)]
    for a in apps:
        ec.register_connection(a, node)
    ec.deploy()
    ec.wait_finished(apps, timeout=60)
    assert ec.abort and ec.failure_level == FailureLevel.RM_FAILURE
    ec.shutdown()
    listing = subprocess.run([sys.executable, "-m", "nepi_dist.cli", "workers"], cwd=str(ROOT), text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url),
                             capture_output=True, check=True, timeout=60).stdout
    assert "host=h-acl" in listing
    assert acl_redis.refusals() == []


def test_a_controller_limited_to_its_experiment_cannot_read_or_change_another(
        acl_redis: AclRedis, acl_worker: str) -> None:
    url_one = acl_redis.add_user("ctl-one", controller_rules("acl-one"))
    url_two = acl_redis.add_user("ctl-two", controller_rules("acl-two"))
    two = run_experiment(url_two, "acl-two")
    keys_two = sorted(acl_redis.admin.scan_iter(match=two.store.keys.pattern()))
    before = {k: acl_redis.admin.dump(k) for k in keys_two}
    assert acl_redis.refusals() == []

    client = redis.Redis.from_url(url_one, decode_responses=True)
    rm_key = two.store.keys.rm(1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hgetall(rm_key)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.hset(rm_key, "state", "0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.delete(two.store.keys.run)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.xrange(two.store.keys.events)
    store = Store(client, "acl-two", two.run_id)  # the store's Lua scripts name the other run's keys
    with pytest.raises(redis.exceptions.NoPermissionError):
        store.set_fields(1, {"err": "changed"})
    with pytest.raises(RedisAuthError):
        ExperimentController(exp_id="acl-two", run_id=two.run_id, redis_url=url_one)
    assert {k: acl_redis.admin.dump(k) for k in keys_two} == before, "not one byte of the other run changed"
    denied = {(e["reason"], e["object"]) for e in acl_redis.refusals()}
    assert ("key", rm_key) in denied
    client.close()


def test_a_wrong_password_is_a_typed_error_at_once(acl_redis: AclRedis) -> None:
    acl_redis.add_user("nepi-controller", controller_rules())
    url = acl_redis.url("nepi-controller").replace(acl_redis.passwords["nepi-controller"], "wrong")
    began = time.monotonic()
    with pytest.raises(RedisAuthError):
        ExperimentController(redis_url=url)
    assert time.monotonic() - began < 5


def test_the_acl_module_prints_an_aclfile_line() -> None:
    out = subprocess.run([sys.executable, "-m", "nepi_dist.engine.acl", "controller", "exp-7", "--file"],
                         cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True,
                         capture_output=True, check=True).stdout
    assert out.startswith("user nepi-controller on >CHANGE-ME ") and "~nepi:{exp-7:*" in out
