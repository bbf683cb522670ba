"""TLS end to end: one ``rediss://`` URL configures the controller, the broker, the store and the workers.

A real redis-server speaking TLS only, requiring a client certificate, with
certificates this module makes (tests/tlsredis.py).  A whole experiment runs
over it with an external ``nepi-dist worker`` process; clients without the
CA, with another CA, with the wrong host name or without a client
certificate are refused with :class:`RedisTLSError`, at once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.celery_app import REDIS_TRANSPORT, create_app
from nepi_dist.engine.connection import redis_client
from nepi_dist.errors import RedisTLSError

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .tlsredis import Certificates, TLSRedis, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    server = TLSRedis(tmp_path_factory.mktemp("tls-redis"), certs).start()
    try:
        yield server
    finally:
        server.stop()


def refused(url: str) -> RedisTLSError:
    """Return the error ExperimentController(url) raises, after checking it came at once."""
    began = time.monotonic()
    with pytest.raises(RedisTLSError) as info:
        ExperimentController(redis_url=url)
    assert time.monotonic() - began < 5, "a refused handshake is not an outage to ride out"
    return info.value


def test_a_whole_experiment_runs_over_tls_with_an_external_worker(tls_redis: TLSRedis, tmp_path: Path) -> None:
    url = tls_redis.url()
    worker = start_worker_process(url, "tls", 4)
    try:
        wait_for_workers(url, 1, timeout=60)
        ec = ExperimentController(redis_url=url)
        try:
            assert ec._worker is None, "the actions run in the external worker, not here"
            node = ec.register_resource("linux::Node")
            app = ec.register_resource("linux::Application")
            ec.set(app, "command", "echo over-tls")
            ec.register_connection(app, node)
            plains = [ec.register_resource("Plain") for _ in range(10)]
            ec.deploy()
            ec.wait_finished([app, *plains], timeout=60)
            assert ec.state(app) == ResourceState.FINISHED
            assert all(ec.state(g) == ResourceState.FINISHED for g in plains)
            assert ec.trace(app, "stdout") == "over-tls\n"
        finally:
            ec.shutdown()
        assert ec.state(app) == ResourceState.RELEASED
    finally:
        stop_process(worker)
    assert worker.returncode == 0


def test_a_worker_on_tls_survives_redis_restarts_and_serves_a_new_run_after(
        certs: Certificates, tmp_path: Path) -> None:
    # The Redis-restart fix of nepi_dist's transport (tests/test_broker_restart.py), over TLS.
    from .test_broker_restart import a_run_finishes, answers_a_ping, hold_eta_messages

    servers = [TLSRedis(tmp_path, certs, "--appendonly", "yes").start()]
    url = servers[0].url()
    worker = start_worker_process(url, "tls-restart", 4)
    try:
        wait_for_workers(url, 1, timeout=60)
        hold_eta_messages(url, 10)
        for _ in range(2):
            servers[-1].kill()
            time.sleep(2)
            servers.append(TLSRedis(tmp_path, certs, "--appendonly", "yes", port=servers[0].port).start())
            answers_a_ping(url, worker)
        a_run_finishes(url)
    finally:
        stop_process(worker)
        servers[-1].stop()


def test_nepi_dist_workers_lists_the_workers_over_tls(tls_redis: TLSRedis) -> None:
    url = tls_redis.url()
    worker = start_worker_process(url, "tls-list", 2, "--host", "tlshost")
    try:
        wait_for_workers(url, 1, timeout=60)
        env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url)
        out = subprocess.run([sys.executable, "-m", "nepi_dist.cli", "workers"], env=env, cwd=str(ROOT),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert "host=tlshost" in out and "queues=nepi.host.tlshost" in out
    finally:
        stop_process(worker)


def test_a_rediss_broker_uses_nepi_dists_transport_and_verifies_the_certificate(tls_redis: TLSRedis) -> None:
    app = create_app(tls_redis.url())
    try:
        assert app.conf.broker_transport == REDIS_TRANSPORT, "the Redis-restart fix holds over TLS too"
        ssl_options = app.conf.broker_use_ssl
        assert ssl_options["ssl_ca_certs"] == str(tls_redis.certs.ca)
        assert ssl_options["ssl_check_hostname"] is True
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            assert type(conn.transport).__name__ == "RedisTransport"
            assert conn.default_channel.client.ping()
    finally:
        app.close()


def test_the_broker_refuses_a_server_whose_ca_it_was_not_given(tls_redis: TLSRedis) -> None:
    # kombu alone, on a rediss:// URL whose query names no ssl_cert_reqs, would not verify at all.
    url = tls_redis.url(ca=tls_redis.certs.other_ca)
    app = create_app(url.replace("ssl_cert_reqs=required&", ""))
    try:
        with app.connection_for_write() as conn, pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            conn.ensure_connection(max_retries=0)
    finally:
        app.close()


def test_a_client_without_the_ca_is_refused_with_a_typed_error(tls_redis: TLSRedis) -> None:
    error = refused(tls_redis.url(ca=False))
    assert "ssl_ca_certs" in str(error) and "certificate verify failed" in str(error)


def test_a_client_trusting_another_ca_is_refused(tls_redis: TLSRedis) -> None:
    refused(tls_redis.url(ca=tls_redis.certs.other_ca))


def test_the_host_name_is_checked_by_default(tls_redis: TLSRedis) -> None:
    error = refused(tls_redis.url("127.0.0.1"))  # the certificate names localhost only
    assert "127.0.0.1" in str(error)


def test_turning_the_host_name_check_off_is_explicit_and_logged(
        tls_redis: TLSRedis, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nepi_dist.engine.tls"):
        client = redis_client(tls_redis.url("127.0.0.1", ssl_check_hostname="false"))
        assert client.ping()
    client.close()
    assert any("ssl_check_hostname=false" in r.getMessage() for r in caplog.records)


def test_a_client_without_a_client_certificate_is_refused(tls_redis: TLSRedis) -> None:
    refused(tls_redis.url(client=False))


@pytest.mark.parametrize("query", [{"ssl_ca_certs": "/nonexistent/ca.pem"}, {"ssl_cert_reqs": "sometimes"},
                                   {"ssl_check_hostname": "perhaps"}])
def test_tls_settings_that_cannot_work_are_refused_before_connecting(
        tls_redis: TLSRedis, query: dict[str, str]) -> None:
    with pytest.raises(RedisTLSError):
        redis_client(tls_redis.url(**query))


def test_tls_options_on_a_plain_redis_url_are_refused(tls_redis: TLSRedis) -> None:
    with pytest.raises(RedisTLSError, match="rediss://"):
        ExperimentController(redis_url=tls_redis.url().replace("rediss://", "redis://"))


def test_the_commands_refuse_a_server_whose_ca_they_lack_with_a_clear_message_and_exit_2(
        tls_redis: TLSRedis) -> None:
    url = tls_redis.url(ca=None)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NEPI_DIST_REDIS_URL", None)
    for argv in (["workers", "--redis-url", url], ["worker", "--redis-url", url, "--concurrency", "1"],
                 ["ls", "--redis-url", url]):
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "nepi_dist.cli", *argv], env=env, cwd=str(ROOT),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (argv, out.stderr)
        assert "TLS handshake with Redis was refused" in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr, (argv, out.stderr)
        assert time.monotonic() - started < 20, argv  # refused at once, not retried for the outage bound
