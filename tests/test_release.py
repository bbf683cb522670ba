"""Releasing (or stopping) a running application stops it; it is not a failure.

Real processes on a localhost node (and one over the test sshd): the run's
failure level, its event stream (every state change, in Redis' order) and the
controller's log say whether the run failed.  An application that FINISHED or
FAILED by itself before the release keeps that in its history.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, FailureLevel, ResourceState, TraceAttr
from nepi_dist.engine.context import RunContext
from nepi_dist.engine.embedded import EmbeddedRedis, free_port
from nepi_dist.model.resource import ResourceFactory
from nepi_dist.resources.linux.application import LinuxApplication

from .conftest import SSHServer, start_worker_process, stop_process, wait_for_workers


def states_of(ctx: RunContext, guid: int) -> list[ResourceState]:
    """Every state ``guid`` entered, in order, from the run's event stream."""
    return [ResourceState(int(f["s"])) for _, f in ctx.store.events("0-0", 1) if int(f["g"]) == guid]


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The log lines that say a resource or the run failed."""
    return [r.getMessage() for r in caplog.records
            if "critical resource" in r.getMessage() or "could not report" in r.getMessage()
            or (r.levelno >= logging.ERROR and "fail" in r.getMessage().lower())]


def group_alive(pid: int, grace: float = 3.0) -> bool:
    """True when some process of the process group ``pid`` is still there after ``grace`` seconds.

    A killed process stays in its group until its parent (here init) reaps it, a moment later.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def add_node(ec: ExperimentController, ssh: SSHServer | None = None, **attrs: object) -> int:
    node = ec.register_resource("linux::Node")
    if ssh is not None:
        attrs = dict(hostname="127.0.0.1", port=ssh.port, username=ssh.username, identity=ssh.identity,
                     serverKey=ssh.server_key, **attrs)
    for name, value in attrs.items():
        ec.set(node, name, value)
    return node


def add_app(ec: ExperimentController, node: int, command: str, rtype: str = "linux::Application",
            **attrs: object) -> int:
    """An RM of ``rtype`` on ``node``, with its ``command`` (when not empty) and ``attrs`` set."""
    guid = ec.register_resource(rtype)
    for name, value in (dict(command=command, **attrs) if command else attrs).items():
        ec.set(guid, name, value)
    ec.register_connection(guid, node)
    return guid


def ended_by_itself(ec: ExperimentController, command: str) -> int:
    """An application of ``command`` on a localhost node, deployed and waited for until it ended by itself."""
    a = add_app(ec, add_node(ec), command)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    return a


def assert_released_cleanly(ec: ExperimentController, guids: list[int], caplog: pytest.LogCaptureFixture) -> None:
    """Every guid ends RELEASED, never FAILED on the way; the run did not fail and no log says so."""
    for g in guids:
        assert ec.state(g) == ResourceState.RELEASED
        history = states_of(ec, g)
        assert ResourceState.FAILED not in history, (g, history, ec.get_resource(g).error_message)
        assert ec.get_resource(g).failed_time is None
    assert ec.failure_level == FailureLevel.OK
    assert not ec.abort
    assert failure_lines(caplog) == []


def deploy_started(ec: ExperimentController, guids: list[int]) -> list[int | None]:
    """Deploy and wait until every guid STARTED; return the pid of each one's process group (None: not recorded)."""
    ec.deploy()
    ec.wait_started(guids, timeout=60)
    return [ec.get_resource(g).pid for g in guids]


def deploy_started_one(ec: ExperimentController, guid: int) -> int:
    """Deploy and wait until ``guid`` STARTED; return the pid of its process group, which it must have recorded."""
    (pid,) = deploy_started(ec, [guid])
    assert pid is not None
    return pid


def release_cleanly(ec: ExperimentController, guids: list[int], pids: list[int | None],
                    caplog: pytest.LogCaptureFixture) -> None:
    """Release the run: every guid RELEASED cleanly (:func:`assert_released_cleanly`), no group of ``pids`` left."""
    ec.release()
    assert_released_cleanly(ec, guids, caplog)
    assert not any(group_alive(p) for p in pids if p is not None), "a process group outlived its release"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The log captured from INFO up: :func:`failure_lines` reads what the controller says of a failure."""
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture
def started_sleep(ec: ExperimentController) -> Iterator[tuple[int, int]]:
    """A ``sleep 30`` STARTED on a localhost node; yields (guid, pid of its process group)."""
    node = add_node(ec)
    a = add_app(ec, node, "sleep 30")
    pid = deploy_started_one(ec, a)
    assert group_alive(pid, grace=0)
    yield a, pid


def test_releasing_a_running_application_is_not_a_failure(
    ec: ExperimentController, started_sleep: tuple[int, int], log: pytest.LogCaptureFixture
) -> None:
    a, pid = started_sleep
    ec.release()
    assert_released_cleanly(ec, [a], log)
    assert states_of(ec, a)[-2:] == [ResourceState.STARTED, ResourceState.RELEASED]
    assert not group_alive(pid), "the application's process group outlived its release"


def test_releasing_a_running_application_with_a_slow_teardown_is_not_a_failure(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    # The watcher reports the exit while the release still runs the tearDown: the RM is STARTED then.
    node = add_node(ec)
    a = add_app(ec, node, "sleep 30", tearDown="sleep 1.5")
    pid = deploy_started_one(ec, a)
    release_cleanly(ec, [a], [pid], log)


def test_shutdown_of_a_running_application_is_not_a_failure(
    redis_server: EmbeddedRedis, log: pytest.LogCaptureFixture
) -> None:
    # Our own Redis outlives the shutdown, so the run's keys can be read after it.
    ec = ExperimentController(redis_url=redis_server.url, local_worker=True, nthreads=10)
    try:
        node = add_node(ec)
        a = add_app(ec, node, "sleep 30")
        pid = deploy_started_one(ec, a)
    finally:
        ec.shutdown()
    assert_released_cleanly(ec, [a], log)
    assert not group_alive(pid)


def test_releasing_a_listening_nc_server_is_not_a_failure(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    node = add_node(ec)
    server = add_app(ec, node, f"nc -l 127.0.0.1 {free_port()}")
    pid = deploy_started_one(ec, server)
    release_cleanly(ec, [server], [pid], log)


def test_releasing_an_iperf3_server_and_a_capturing_tcpdump_is_not_a_failure(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    node = add_node(ec)
    server = add_app(ec, node, "", "linux::UdpTest", server=True, port=free_port())
    dump = add_app(ec, node, "", "linux::Tcpdump", interface="lo", numeric=True, filter="icmp")
    pids = deploy_started(ec, [server, dump])
    release_cleanly(ec, [server, dump], pids, log)


def test_releasing_a_running_application_over_ssh_is_not_a_failure(
    ec: ExperimentController, sshd: SSHServer, log: pytest.LogCaptureFixture
) -> None:
    # The watcher checks an SSH host every half second, and sees a killed process gone once it is
    # reaped (init here reaps orphans every ~2 s): the tearDown keeps the release going meanwhile.
    node = add_node(ec, sshd)
    a = add_app(ec, node, "sleep 30", tearDown="sleep 3")
    pid = deploy_started_one(ec, a)
    release_cleanly(ec, [a], [pid], log)  # the test sshd is on this machine: same pids


def test_an_application_that_finished_before_the_release_keeps_its_finish_time(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    a = ended_by_itself(ec, "echo done")
    assert ec.state(a) == ResourceState.FINISHED
    finished = ec.get_resource(a).finish_time
    ec.release()
    assert_released_cleanly(ec, [a], log)
    assert ec.get_resource(a).finish_time == finished
    assert states_of(ec, a)[-3:] == [ResourceState.STARTED, ResourceState.FINISHED, ResourceState.RELEASED]
    assert ec.get_resource(a).exitcode == 0


def test_an_application_that_failed_by_itself_stays_failed_in_its_history_after_the_release(
    ec: ExperimentController,
) -> None:
    a = ended_by_itself(ec, "echo broken >&2; exit 3")
    assert ec.state(a) == ResourceState.FAILED
    rm = ec.get_resource(a)
    failed, message = rm.failed_time, rm.error_message
    assert failed is not None and "exited 3" in (message or "")
    ec.release()
    assert ec.state(a) == ResourceState.RELEASED
    assert rm.failed_time == failed and rm.error_message == message
    assert states_of(ec, a)[-3:] == [ResourceState.STARTED, ResourceState.FAILED, ResourceState.RELEASED]
    assert ec.failure_level == FailureLevel.RM_FAILURE
    assert ec.abort


def test_stopping_a_running_application_is_not_a_failure(
    ec: ExperimentController, started_sleep: tuple[int, int], log: pytest.LogCaptureFixture
) -> None:
    a, pid = started_sleep
    ec.stop(a)
    ec.wait_finished(a, timeout=30)
    assert ec.state(a) == ResourceState.STOPPED
    assert not group_alive(pid)
    assert ResourceState.FAILED not in states_of(ec, a)
    assert ec.failure_level == FailureLevel.OK
    assert failure_lines(log) == []


def test_an_application_restarted_after_a_stop_is_still_seen_failing_by_itself(ec: ExperimentController) -> None:
    # The first run is stopped; the second exits 3 at once: the stop of the first must not hide it.
    node = add_node(ec)
    a = add_app(ec, node, "if [ -e ran-once ]; then exit 3; fi; touch ran-once; sleep 30", critical=False)
    ec.deploy()
    ec.wait_started(a, timeout=60)
    ran_once = Path(ec.trace(a, "ran-once", TraceAttr.PATH))
    deadline = time.monotonic() + 30
    while not ran_once.exists():  # STARTED is the launch: under load the shell is not at `touch` yet
        assert time.monotonic() < deadline, "the first run never reached its touch"
        time.sleep(0.05)
    ec.stop(a)
    ec.wait_finished(a, timeout=30)
    assert ec.state(a) == ResourceState.STOPPED
    ec.start(a)
    ec.wait(a, ResourceState.FAILED, timeout=30)
    assert ec.state(a) == ResourceState.FAILED
    assert ec.get_resource(a).exitcode == 3


def test_a_node_that_cleans_processes_deploys_and_releases_its_running_application_cleanly(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    node = add_node(ec, cleanProcesses=True)
    a = add_app(ec, node, "sleep 30")
    pid = deploy_started_one(ec, a)
    release_cleanly(ec, [a, node], [pid], log)


def test_applications_released_by_another_worker_process_than_their_watcher_are_not_failures(
    redis_server: EmbeddedRedis, log: pytest.LogCaptureFixture
) -> None:
    # Two worker processes: each application's watcher is in the worker that started it, its
    # release runs on either; the tearDown keeps the release going while the watcher reports.
    url = redis_server.url
    procs = [start_worker_process(url, f"rel{i}", 4) for i in (1, 2)]
    ec = ExperimentController(redis_url=url, local_worker=False)
    try:
        wait_for_workers(url, 2)
        node = add_node(ec)
        apps = [add_app(ec, node, "sleep 30", tearDown="sleep 1") for _ in range(4)]
        pids = deploy_started(ec, apps)
        release_cleanly(ec, apps, pids, log)
    finally:
        ec.shutdown()
        for p in procs:
            stop_process(p)


def test_sleep_marker_processes_are_gone_after_release(ec: ExperimentController) -> None:
    # The whole group goes: a child the command put in the background too.
    marker = f"nepi-release-{os.getpid()}-{ec.run_id}"
    node = add_node(ec)
    a = add_app(ec, node, f"bash -c 'exec -a {marker} sleep 300' & wait")
    ec.deploy()
    ec.wait_started(a, timeout=60)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
    ec.release()
    gone = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    assert gone.returncode == 1, f"processes left: {gone.stdout!r}"
    assert ec.failure_level == FailureLevel.OK


def test_an_exit_by_itself_at_the_moment_of_the_release_is_a_finish_or_nothing_never_a_kill_failure(
    ec: ExperimentController,
) -> None:
    # Exits spread around the release's moment: each one races the release's kill.
    node = add_node(ec)
    apps = {add_app(ec, node, f"sleep {0.2 + 0.05 * i:.2f}; exit {code}", critical=False): code
            for i in range(12) for code in (0, 3)}
    ec.deploy()
    ec.wait_started(list(apps), timeout=60)
    time.sleep(0.35)
    ec.release()
    for g, code in apps.items():
        rm = ec.get_resource(g)
        history = states_of(ec, g)
        assert ec.state(g) == ResourceState.RELEASED
        assert "killed before" not in (rm.error_message or ""), history
        if ResourceState.FINISHED in history:
            assert code == 0 and rm.exitcode == 0
        if ResourceState.FAILED in history:
            assert code == 3 and rm.exitcode == 3, history
    assert ec.failure_level == FailureLevel.OK


class SlowStartApplication(LinuxApplication):
    """Takes a second between launching its command and recording its pid (a start caught mid-way)."""

    _rtype = "test::SlowStartApplication"

    def _put(self, **values: object) -> None:
        if "pid" in values:
            time.sleep(1.0)
        super()._put(**values)


def test_a_release_during_a_start_that_has_not_recorded_its_pid_yet_stops_the_process(
    ec: ExperimentController, log: pytest.LogCaptureFixture
) -> None:
    ResourceFactory.register_type(SlowStartApplication)
    marker = f"nepi-slowstart-{os.getpid()}-{ec.run_id}"
    node = add_node(ec)
    a = add_app(ec, node, f"exec -a {marker} sleep 30", "test::SlowStartApplication")
    ec.deploy()
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the command never ran"
        time.sleep(0.05)
    assert ec.state(a) == ResourceState.READY and ec.get_resource(a).pid is None
    ec.release()
    assert_released_cleanly(ec, [a], log)
    deadline = time.monotonic() + 10
    while (pid := ec.get_resource(a).pid) is None:
        assert time.monotonic() < deadline, "the start never recorded its pid"
        time.sleep(0.05)
    assert not group_alive(pid), "a process started as its RM was released outlived the release"
