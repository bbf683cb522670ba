"""Linux resources with real processes, on localhost and over real SSH (a test sshd)."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, FailureLevel, ResourceAction, ResourceState, TraceAttr
from nepi_dist.resources.linux.shell import HostSpec, shell_for

from .conftest import SSHServer

HOSTS = ["local", "ssh"]


@pytest.fixture(params=HOSTS)
def node(request: pytest.FixtureRequest, ec: ExperimentController) -> int:
    """A linux::Node on localhost, or on the test sshd over SSH."""
    guid = ec.register_resource("linux::Node")
    if request.param == "ssh":
        srv: SSHServer = request.getfixturevalue("sshd")
        for name, value in dict(hostname="127.0.0.1", port=srv.port, username=srv.username,
                                identity=srv.identity, serverKey=srv.server_key).items():
            ec.set(guid, name, value)
    return guid


def app(ec: ExperimentController, node: int, command: str | None = None, **attrs: object) -> int:
    guid = ec.register_resource("linux::Application")
    if command is not None:
        ec.set(guid, "command", command)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    ec.register_connection(guid, node)
    return guid


def test_echo_prints_hola_to_the_stdout_trace(ec: ExperimentController, node: int) -> None:
    a = app(ec, node, "echo 'HOLA'")
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    assert ec.state(a) == ResourceState.FINISHED
    assert ec.trace(a, "stdout") == "HOLA\n"
    assert ec.get_resource(a).exitcode == 0


def test_ping_traces_answer_all_stream_path_and_size(ec: ExperimentController, node: int) -> None:
    p = ec.register_resource("linux::Ping")
    ec.set(p, "target", "127.0.0.1")
    ec.set(p, "count", 3)
    ec.set(p, "interval", 0.2)
    ec.register_connection(p, node)
    ec.deploy()
    ec.wait_finished(p, timeout=60)
    assert ec.state(p) == ResourceState.FINISHED
    out = ec.trace(p, "stdout")
    assert "3 packets transmitted, 3 received" in out
    assert len(ec.trace(p, "stdout", TraceAttr.ALL)) == ec.trace(p, "stdout", TraceAttr.SIZE)
    assert ec.trace(p, "stdout", TraceAttr.STREAM, block=5, offset=1) == out[5:10]
    assert ec.trace(p, "stdout", TraceAttr.PATH).endswith(f"/app-{p}/{ec.run_id}/stdout")


def test_a_client_started_on_server_started_reads_what_the_server_sent(
    ec: ExperimentController, node: int
) -> None:
    from nepi_dist.engine.embedded import free_port

    port = free_port()
    server = app(ec, node, f"echo 'hello from the server' | nc -l -q 1 127.0.0.1 {port} || "
                           f"echo 'hello from the server' | nc -l 127.0.0.1 {port}")
    client = app(ec, node, f"for i in 1 2 3 4 5 6 7 8 9 10; do nc -w 2 127.0.0.1 {port} < /dev/null && break; "
                           "sleep 0.2; done")
    ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "0.5s")
    ec.deploy()
    ec.wait_finished([server, client], timeout=60)
    assert "hello from the server" in ec.trace(client, "stdout")
    assert ec.get_resource(client).start_time - ec.get_resource(server).start_time >= 0.5


def test_c_code_built_on_deploy_prints_exactly_hello_world(ec: ExperimentController, node: int) -> None:
    code = '#include <stdio.h>\nint main(void) { printf("Hello, world!"); return 0; }\n'
    a = app(ec, node, "${APP_HOME}/hello", code=code, depends="gcc",
            build="cp ${APP_HOME}/code ${APP_HOME}/hello.c && gcc -o ${APP_HOME}/hello ${APP_HOME}/hello.c")
    ec.deploy()
    ec.wait_finished(a, timeout=120)
    assert ec.state(a) == ResourceState.FINISHED, ec.get_resource(a).error_message
    assert ec.trace(a, "stdout") == "Hello, world!"
    assert ec.trace(a, "deploy_exitcode").strip() == "0"


@pytest.fixture
def http_file(tmp_path: Path) -> Iterator[str]:
    """An http server on 127.0.0.1 serving one file; yields its URL."""
    (tmp_path / "served.txt").write_text("from http\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/served.txt"
    finally:
        server.shutdown()


def test_sources_from_a_local_path_and_an_http_url_land_in_src(
    ec: ExperimentController, node: int, http_file: str, tmp_path: Path
) -> None:
    local = tmp_path / f"local-{os.getpid()}.txt"
    local.write_text("from disk\n")
    a = app(ec, node, f"cat ${{SRC}}/{local.name} ${{SRC}}/served.txt", sources=f"{local};{http_file}")
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    assert ec.trace(a, "stdout") == "from disk\nfrom http\n"


def test_an_unknown_command_fails_with_exit_code_127_and_the_shell_message(
    ec: ExperimentController, node: int
) -> None:
    a = app(ec, node, "no-such-command-nepi", critical=False)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    rm = ec.get_resource(a)
    assert ec.state(a) == ResourceState.FAILED
    assert rm.exitcode == 127
    assert "command not found" in ec.trace(a, "stderr")
    assert "127" in (rm.error_message or "")
    assert ec.failure_level == FailureLevel.OK


def test_stop_kills_a_long_sleep_and_its_whole_process_group(ec: ExperimentController, node: int) -> None:
    marker = f"nepi-sleep-{os.getpid()}-{ec.run_id}"
    a = app(ec, node, f"bash -c 'exec -a {marker} sleep 300' & wait")
    ec.deploy()
    ec.wait_started(a, timeout=60)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    ec.stop(a)
    ec.wait_finished(a, timeout=30)
    assert ec.state(a) == ResourceState.STOPPED
    gone = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    assert gone.returncode == 1, f"processes left: {gone.stdout!r}"


def test_an_application_without_a_command_goes_straight_to_stopped(ec: ExperimentController, node: int) -> None:
    a = app(ec, node)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    assert ec.state(a) == ResourceState.STOPPED


def test_an_unreachable_ssh_host_fails_with_the_ssh_error_and_spares_the_others(ec: ExperimentController) -> None:
    from nepi_dist.engine.embedded import free_port

    bad = ec.register_resource("linux::Node")
    ec.set(bad, "hostname", "127.0.0.1")
    ec.set(bad, "port", free_port())
    ec.set(bad, "connectTimeout", 2.0)
    ec.set(bad, "critical", False)
    good = ec.register_resource("linux::Node")
    on_bad = app(ec, bad, "echo never", critical=False)
    on_good = app(ec, good, "echo fine")
    ec.deploy()
    ec.wait_finished([on_good, on_bad], timeout=60)
    assert ec.state(bad) == ResourceState.FAILED
    assert "ssh" in (ec.get_resource(bad).error_message or "")
    assert ec.state(on_good) == ResourceState.FINISHED
    assert ec.failure_level == FailureLevel.OK
    assert ec.state(on_bad) == ResourceState.FAILED, "its application cannot reach the host either"


def test_a_collector_gathers_every_applications_stdout(
    ec: ExperimentController, node: int, tmp_path: Path
) -> None:
    apps = [app(ec, node, f"echo app {i}") for i in range(3)]
    col = ec.register_resource("Collector")
    ec.set(col, "resultsDir", str(tmp_path))
    for a in apps:
        ec.register_connection(col, a)
    ec.deploy()
    ec.wait_finished(apps, timeout=60)
    ec.shutdown()
    run_dir = tmp_path / ec.exp_id / ec.run_id
    for i, a in enumerate(apps):
        assert (run_dir / f"application-{a}.stdout").read_text() == f"app {i}\n"


# Serial: under the parallel phase's load the test sshd dropped this connection twice in three runs
# ("Channel closed", EOFError; cause not found yet, see the stop note of 2026-12-02).
@pytest.mark.serial
def test_fifty_pings_on_one_node_all_finish(ec: ExperimentController, node: int) -> None:
    pings = []
    for _ in range(50):
        p = ec.register_resource("linux::Ping")
        ec.set(p, "target", "127.0.0.1")
        ec.set(p, "count", 2)
        ec.set(p, "interval", 0.2)
        ec.register_connection(p, node)
        pings.append(p)
    ec.deploy()
    ec.wait_finished(pings, timeout=180)
    assert all(ec.state(p) == ResourceState.FINISHED for p in pings)


@pytest.mark.serial
def test_an_application_is_finished_within_a_second_of_its_exit(ec: ExperimentController, node: int) -> None:
    # The process records when it exits (this machine's clock, which the Redis clock is on too).
    a = app(ec, node, "sleep 0.5; date +%s.%N > exited")
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    exited = float(ec.trace(a, "exited"))
    lag = ec.get_resource(a).finish_time - exited
    assert 0 <= lag < 1.0, f"finished {lag:.3f}s after the process exited"


def test_an_applications_end_is_seen_when_the_worker_holds_more_than_1024_open_files(
        ec: ExperimentController, node: int) -> None:
    # A worker reaching many hosts holds many sockets: its pidfds are numbered past select()'s 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) >= 1024
        a = app(ec, node, "sleep 0.2")
        ec.deploy()
        ec.wait_finished(a, timeout=30)
        assert ec.state(a) == ResourceState.FINISHED
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_traceroute_reaches_the_loopback_target(ec: ExperimentController) -> None:
    node = ec.register_resource("linux::Node")
    tr = ec.register_resource("linux::Traceroute")
    ec.set(tr, "target", "127.0.0.1")
    ec.set(tr, "numeric", True)
    ec.set(tr, "maxHops", 3)
    ec.register_connection(tr, node)
    ec.deploy()
    ec.wait_finished(tr, timeout=60)
    assert ec.state(tr) == ResourceState.FINISHED, ec.get_resource(tr).error_message
    assert "127.0.0.1" in ec.trace(tr, "stdout")


def test_an_iperf3_client_measures_udp_throughput_against_a_server(ec: ExperimentController) -> None:
    from nepi_dist.engine.embedded import free_port

    port = free_port()
    node = ec.register_resource("linux::Node")
    server = ec.register_resource("linux::UdpTest")
    ec.set(server, "server", True)
    ec.set(server, "oneOff", True)
    ec.set(server, "port", port)
    client = ec.register_resource("linux::UdpTest")
    for name, value in dict(target="127.0.0.1", port=port, udp=True, bandwidth="1M", duration=1, json=True).items():
        ec.set(client, name, value)
    for g in (server, client):
        ec.register_connection(g, node)
    ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "0.5s")
    ec.deploy()
    ec.wait_finished([server, client], timeout=60)
    assert ec.state(client) == ResourceState.FINISHED, ec.trace(client, "stderr")
    import json

    report = json.loads(ec.trace(client, "stdout"))
    assert report["end"]["sum"]["bytes"] > 0


def test_tcpdump_captures_loopback_packets_into_the_pcap_trace(ec: ExperimentController) -> None:
    node = ec.register_resource("linux::Node")
    dump = ec.register_resource("linux::Tcpdump")
    for name, value in dict(interface="lo", count=4, numeric=True, filter="icmp", pcapFile="pcap").items():
        ec.set(dump, name, value)
    ping = ec.register_resource("linux::Ping")
    for name, value in dict(target="127.0.0.1", count=4, interval=0.2).items():
        ec.set(ping, name, value)
    for g in (dump, ping):
        ec.register_connection(g, node)
    ec.register_condition(ping, ResourceAction.START, dump, ResourceState.STARTED, "1s")
    ec.deploy()
    ec.wait_finished([dump, ping], timeout=60)
    assert ec.state(dump) == ResourceState.FINISHED, ec.trace(dump, "stderr")
    size = ec.trace(dump, "pcap", TraceAttr.SIZE)
    assert size > 24  # a pcap header and at least one packet
    magic = ec.trace(dump, "pcap", TraceAttr.STREAM, block=4, offset=0)
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), "a binary trace comes back as pcap bytes"
    assert len(ec.trace(dump, "pcap", TraceAttr.ALL)) == size


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_host_whose_ssh_connection_the_server_dropped_is_reached_again_on_a_new_connection(
        sshd: SSHServer, caplog: pytest.LogCaptureFixture) -> None:
    # The server side of the connection dies (sshd restarted, a link cut and back): the next
    # command opens no channel on it, so it is sent again, once, on a fresh connection.
    spec = HostSpec(hostname="127.0.0.1", port=sshd.port, username=sshd.username, identity=sshd.identity,
                    server_key=sshd.server_key, connect_timeout=10)
    shell = shell_for(spec)
    assert shell.run("echo one").stdout == "one\n"
    sessions = _children(sshd.proc.pid)
    assert sessions, "no sshd process serves the connection"
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(p in _children(sshd.proc.pid) for p in sessions):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="nepi_dist.resources.linux.shell"):
        assert shell.run("echo two").stdout == "two\n"
    assert "connecting again" in caplog.text
    assert shell.run("echo three").stdout == "three\n"
