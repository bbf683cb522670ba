"""The ``nepi-dist`` command, run as a subprocess against real runs: embedded, and two external
workers with a separate controller.  Exit codes, ``--json`` shapes, ``@latest``, the live view's
output, Ctrl-C (SIGINT to the process group) with a check that no application or redis-server is
left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import ROOT

PY = sys.executable


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nepi-dist ARGS`` to its end."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([PY, "-m", "nepi_dist.cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd=str(cwd or ROOT))


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def processes_with(marker: str) -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[1].split()[0]
        if marker in cmdline and state != "Z":
            found.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1]), cmdline.strip()))
    return found


def gone(marker: str, within: float = 5.0) -> list[tuple[int, int, str]]:
    """Wait until no process holds ``marker``; return those still there after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


LONG_SCRIPT = """
    import sys
    from nepi_dist import ExperimentController
    ec = ExperimentController(exp_id="cockpit-long")
    print("URL", ec.redis_url, flush=True)
    node = ec.register_resource("linux::Node")
    apps = []
    for _ in range(2):
        app = ec.register_resource("linux::Application")
        ec.set(app, "command", "sleep {seconds}")
        ec.register_connection(app, node)
        apps.append(app)
    ec.deploy()
    ec.wait_started(apps, timeout=60)
    print("STARTED", flush=True)
    {ending}
"""


def unique_seconds() -> int:
    """A sleep length no other test run uses: its command line marks this test's applications."""
    return 40000 + int.from_bytes(os.urandom(2), "big")


def kill_left(marker: str) -> None:
    """Kill what a failed test left running (by pid, only this test's processes)."""
    for pid, _, _ in processes_with(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start_in_own_group(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(tmp_path), start_new_session=True)


@contextlib.contextmanager
def in_own_group(args: list[str], tmp_path: Path, left: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run ``args`` in a process group of its own for the ``with`` block.

    A test that fails before the process ends must not leave it behind: on the way out, a process
    still running has its group SIGKILLed, and the processes marked ``left`` (its applications,
    detached as on a worker host) are killed too.
    """
    proc = start_in_own_group(args, tmp_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            if left is not None:
                kill_left(left)


def read_until(proc: subprocess.Popen[str], word: str, timeout: float = 60) -> list[str]:
    """Lines of the process's stdout up to the one holding ``word``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if word in line:
            return lines
    raise AssertionError(f"{word!r} never came: {''.join(lines)}{proc.stderr.read() if proc.stderr else ''}")


def redis_port(lines: list[str]) -> str:
    url = next(line.split()[1] for line in lines if line.startswith("URL "))
    return url.rsplit(":", 1)[1].split("/")[0]


# -- the command itself --------------------------------------------------------------------------


def test_every_option_of_every_command_has_help_text_and_version_prints() -> None:
    from nepi_dist.cli import app

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert {"worker", "workers", "run", "ls", "status", "logs", "watch", "abort", "clean"} <= set(commands)
    for name, command in commands.items():
        assert command.help, f"{name} has no help"
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name} has no help"
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("nepi-dist 0."), out


def test_a_worker_with_no_redis_url_refuses_to_start_and_says_which_variable_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NEPI_DIST_REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    # In a network namespace of its own: were it to connect, its 127.0.0.1:6379 is nobody's.
    out = subprocess.run(["unshare", "--net", PY, "-m", "nepi_dist.cli", "worker", "--concurrency", "1"],
                         env=env, capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.returncode == 2, out.stderr
    assert "no Redis to serve: give --redis-url or set $NEPI_DIST_REDIS_URL" in out.stderr
    assert "embedded Redis" in out.stderr and "sends no work to any other" in out.stderr


# -- nepi-dist run SCRIPT.py ------------------------------------------------------------------------


def test_running_hello_exits_0_with_the_live_view_and_the_non_critical_failure_named() -> None:
    out = cli("run", str(ROOT / "examples" / "hello.py"))
    assert out.returncode == 0, out.stderr
    assert "late application started 2.0" in out.stdout
    assert "failure level OK" in out.stdout
    assert "FINISHED" in out.stdout and "11/13 FINISHED" in out.stdout  # the live view's last drawing
    assert "FAILED example::Flaky guid 13: RuntimeError: this application fails on purpose" in out.stdout
    assert "FAILED example::Flaky guid 13" in out.stderr  # the controller's log, as it happened


CRITICAL = """
    from nepi_dist import ExperimentController
    ec = ExperimentController(exp_id="cockpit-crit")
    node = ec.register_resource("linux::Node")
    ok = ec.register_resource("linux::Application")
    ec.set(ok, "command", "sleep 30")
    ec.register_connection(ok, node)
    bad = ec.register_resource("linux::Application")
    ec.set(bad, "command", "echo no-such-file >&2; exit 3")
    ec.register_connection(bad, node)
    ec.deploy()
    ec.wait_finished([ok, bad], timeout=60)
    ec.shutdown()
"""


def test_a_critical_failure_exits_1_and_says_type_host_command_and_reason(tmp_path: Path) -> None:
    out = cli("run", str(script(tmp_path, "crit.py", CRITICAL)))
    assert out.returncode == 1, out.stderr
    said = "linux::Application guid 3 on localhost running 'echo no-such-file >&2; exit 3': " \
           "command exited 3: no-such-file"
    assert f"FAILED {said}" in out.stdout
    assert "critical resource failed, aborting the run (failure level RM_FAILURE" in out.stderr
    assert said in out.stderr
    assert "failure level 2" not in out.stderr + out.stdout


def test_run_json_prints_one_summary_with_the_runs_and_their_resources(tmp_path: Path) -> None:
    out = cli("run", "--json", str(script(tmp_path, "crit.py", CRITICAL)))
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    assert summary["exit_code"] == 1 and summary["error"] is None
    (run,) = summary["runs"]
    assert run["exp_id"] == "cockpit-crit" and run["failure_level"] == "RM_FAILURE"
    assert {r["guid"] for r in run["resources"]} == {1, 2, 3}
    bad = next(r for r in run["resources"] if r["guid"] == 3)
    assert bad["state"] == "RELEASED" and "FAILED" in bad["times"] and "exited 3" in bad["error"]
    assert bad["rtype"] == "linux::Application" and bad["host"] == "localhost"


def test_a_script_that_raises_exits_2_with_its_traceback_and_its_run_released(tmp_path: Path) -> None:
    path = script(tmp_path, "raises.py", """
        from nepi_dist import ExperimentController
        ec = ExperimentController(exp_id="cockpit-raises")
        print("URL", ec.redis_url, flush=True)
        ec.register_resource("linux::Node")
        ec.deploy()
        raise RuntimeError("the script itself is wrong")
    """)
    out = cli("run", "--quiet", str(path))
    assert out.returncode == 2
    assert "RuntimeError: the script itself is wrong" in out.stderr
    assert "was not shut down by its script: releasing it" in out.stderr
    assert gone(f"127.0.0.1:{redis_port(out.stdout.splitlines())}") == []


def test_a_bad_experiment_argument_exits_2_saying_why(tmp_path: Path) -> None:
    odd = tmp_path / "exp.txt"
    odd.write_text("x")
    out = cli("run", str(odd))
    assert out.returncode == 2 and "a .py script or an experiment file" in out.stderr
    out = cli("run", "--detach", str(ROOT / "examples" / "hello.py"))
    assert out.returncode == 2 and "--detach needs --redis-url" in out.stderr


def test_an_error_raised_on_a_worker_reaches_the_controllers_terminal(two_workers: str, tmp_path: Path) -> None:
    path = script(tmp_path, "unknown.py", """
        from nepi_dist import ExperimentController, ResourceFactory, ResourceManager

        class OnlyHere(ResourceManager):
            _rtype = "test::OnlyHere"   # the controller knows it, the workers do not

        ResourceFactory.register_type(OnlyHere)
        ec = ExperimentController(exp_id="cockpit-unknown")
        g = ec.register_resource("test::OnlyHere")
        ec.deploy()
        ec.wait_finished([g], timeout=60)
        ec.shutdown()
    """)
    out = cli("run", str(path), env={"NEPI_DIST_REDIS_URL": two_workers})
    assert out.returncode == 1, out.stderr
    assert "test::OnlyHere guid 1: UnknownResourceTypeError" in out.stderr
    assert "FAILED test::OnlyHere guid 1: UnknownResourceTypeError" in out.stdout


def test_detach_prints_the_run_and_returns_while_the_run_goes_on(two_workers: str, tmp_path: Path) -> None:
    path = script(tmp_path, "detach.py", """
        import tests.rms  # the test RM types, which the workers know too
        from nepi_dist import ExperimentController
        ec = ExperimentController(exp_id="cockpit-detach")
        gs = [ec.register_resource("Plain") for _ in range(3)]
        ec.deploy()
        raise SystemExit("never reached with --detach")
    """)
    out = cli("run", "--detach", str(path), env={"NEPI_DIST_REDIS_URL": two_workers})
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout.strip().splitlines()[-1])
    assert ids["exp_id"] == "cockpit-detach"
    ec = ExperimentController(ids["exp_id"], ids["run_id"], redis_url=two_workers)
    try:
        ec.wait_finished([1, 2, 3], timeout=60)
        assert [ec.state(g) for g in (1, 2, 3)] == [ResourceState.FINISHED] * 3
    finally:
        ec.shutdown()


# -- Ctrl-C and the ends of a process ---------------------------------------------------------------


def test_ctrl_c_on_nepi_dist_run_releases_everything_and_leaves_nothing_behind(tmp_path: Path) -> None:
    seconds = unique_seconds()
    marker = f"sleep {seconds}"
    path = script(tmp_path, "long.py", LONG_SCRIPT.format(seconds=seconds, ending="ec.wait_finished(apps)"))
    with in_own_group([PY, "-m", "nepi_dist.cli", "run", str(path)], tmp_path, left=marker) as proc:
        lines = read_until(proc, "STARTED")
        port = redis_port(lines)
        deadline = time.monotonic() + 10  # STARTED: launched; the command's own process comes a moment later
        while len([p for p in processes_with(marker) if p[2] == marker]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len([p for p in processes_with(marker) if p[2] == marker]) == 2
        # Another process attaches to the embedded run while it runs (read-only), and does not hang.
        seen = cli("status", "cockpit-long", "--json", "--redis-url", f"redis://127.0.0.1:{port}/0", timeout=30)
        assert seen.returncode == 0 and json.loads(seen.stdout)["live"] is True
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: releasing every open run" in err and "Traceback" not in err
    assert gone(marker) == [], "an application was left running"
    assert gone(f"127.0.0.1:{port}") == [], "the embedded redis-server was left running"


def test_sigterm_on_nepi_dist_run_releases_everything_and_exits_143(tmp_path: Path) -> None:
    seconds = unique_seconds()
    path = script(tmp_path, "long.py", LONG_SCRIPT.format(seconds=seconds, ending="ec.wait_finished(apps)"))
    with in_own_group([PY, "-m", "nepi_dist.cli", "run", str(path)], tmp_path, left=f"sleep {seconds}") as proc:
        port = redis_port(read_until(proc, "STARTED"))
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted: releasing every open run" in err
    assert gone(f"sleep {seconds}") == [] and gone(f"127.0.0.1:{port}") == []


def test_a_second_ctrl_c_stops_at_once_without_waiting_for_the_release(tmp_path: Path) -> None:
    path = script(tmp_path, "slow_release.py", """
        import time
        from nepi_dist import ExperimentController, ResourceFactory, ResourceManager

        class SlowRelease(ResourceManager):
            _rtype = "test::SlowRelease"
            def do_release(self):
                time.sleep(60)
                super().do_release()

        ResourceFactory.register_type(SlowRelease)
        ec = ExperimentController(exp_id="cockpit-slow")
        print("URL", ec.redis_url, flush=True)
        g = ec.register_resource("test::SlowRelease")
        ec.deploy()
        ec.wait_started([g], timeout=60)
        print("STARTED", flush=True)
        ec.wait_finished([g])
    """)
    with in_own_group([PY, "-m", "nepi_dist.cli", "run", str(path)], tmp_path) as proc:
        port = redis_port(read_until(proc, "STARTED"))
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(2)  # the release now waits on do_release
        assert proc.poll() is None
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - began
    assert proc.returncode == 130 and took < 10, err
    assert "interrupted again: stopping 1 controller(s) without waiting" in err
    assert gone(f"127.0.0.1:{port}") == []


@pytest.mark.parametrize("how", ["sigint", "sigterm", "sys.exit", "exception"])
def test_a_plain_script_ending_without_shutdown_releases_its_embedded_run(tmp_path: Path, how: str) -> None:
    seconds = unique_seconds()
    ending = {"sys.exit": "sys.exit(3)", "exception": "raise RuntimeError('boom')"}.get(how, "ec.wait_finished(apps)")
    path = script(tmp_path, "plain.py", LONG_SCRIPT.format(seconds=seconds, ending=ending))
    with in_own_group([PY, str(path)], tmp_path, left=f"sleep {seconds}") as proc:
        port = redis_port(read_until(proc, "STARTED"))
        if how == "sigint":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigterm":
            proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "was not shut down: releasing it before the process exits" in err, err
    assert gone(f"sleep {seconds}") == [], "an application was left running"
    assert gone(f"127.0.0.1:{port}") == [], "the embedded redis-server was left running"


def test_a_sigkilled_script_takes_its_embedded_redis_with_it(tmp_path: Path) -> None:
    seconds = unique_seconds()
    path = script(tmp_path, "killed.py", LONG_SCRIPT.format(seconds=seconds, ending="ec.wait_finished(apps)"))
    proc = start_in_own_group([PY, str(path)], tmp_path)
    try:
        port = redis_port(read_until(proc, "STARTED"))
        proc.kill()
        proc.wait(10)
        assert gone(f"127.0.0.1:{port}") == [], "the embedded redis-server outlived its owner"
    finally:
        # A SIGKILL lets nothing release: the applications (detached, as on a worker host) stay.
        kill_left(f"sleep {seconds}")


def test_attaching_to_an_embedded_run_whose_process_ended_fails_at_once(tmp_path: Path) -> None:
    out = cli("run", str(ROOT / "examples" / "hello.py"))
    url = next(line.split()[3] for line in out.stdout.splitlines() if line.startswith("run hello/"))
    began = time.monotonic()
    status = cli("status", "hello", "--redis-url", url, timeout=30)
    assert status.returncode == 2 and f"cannot reach Redis at {url}" in status.stderr
    assert time.monotonic() - began < 20


# -- commands on a run, from another process ---------------------------------------------------------


@pytest.fixture
def remote_run(two_workers: str) -> tuple[str, ExperimentController]:
    ec = ExperimentController(exp_id="cockpit-remote", redis_url=two_workers)
    node = ec.register_resource("Node")
    apps = [ec.register_resource("Application") for _ in range(3)]
    bad = ec.register_resource("ErrorApplication")
    ec.set(bad, "critical", False)
    for g in [*apps, bad]:
        ec.register_connection(g, node)
    ec.deploy()
    ec.wait_finished([*apps, bad], timeout=60)
    yield two_workers, ec
    if not ec.store.frozen:
        ec.shutdown()


def test_ls_and_status_show_a_live_run_to_another_process_and_name_latest(
        remote_run: tuple[str, ExperimentController]) -> None:
    url, ec = remote_run
    listing = cli("ls", "--json", "--redis-url", url)
    assert listing.returncode == 0, listing.stderr
    (run,) = [r for r in json.loads(listing.stdout) if r["exp_id"] == "cockpit-remote"]
    assert run["run_id"] == ec.run_id and run["live"] is True and run["failure_level"] == "OK"
    assert run["states"] == {"STARTED": 1, "FINISHED": 3, "FAILED": 1}
    status = cli("status", "cockpit-remote", "@latest", "--json", "--redis-url", url)
    assert status.returncode == 0
    shape = json.loads(status.stdout)
    assert {"exp_id", "run_id", "failure_level", "resources"} <= set(shape)
    assert shape["run_id"] == ec.run_id
    assert {"guid", "rtype", "state", "host", "error"} <= set(shape["resources"][0])
    failed = [r for r in shape["resources"] if r["state"] == "FAILED"]
    assert [r["rtype"] for r in failed] == ["ErrorApplication"] and failed[0]["error"]
    table = cli("status", "cockpit-remote", "--redis-url", url)
    assert "FAILED ErrorApplication guid 5" in table.stdout
    # Only reads: the run's keeper lease and its pending actions are the workers' business.
    assert ec.store.client.get(ec.store.keys.keeper) != "cli"


def test_logs_prints_the_event_stream_and_follow_ends_when_the_run_is_released(
        remote_run: tuple[str, ExperimentController]) -> None:
    url, ec = remote_run
    once = cli("logs", "cockpit-remote", ec.run_id, "--json", "--redis-url", url)
    events = [json.loads(line) for line in once.stdout.splitlines()]
    assert {"guid": 2, "rtype": "Application", "state": "FINISHED"}.items() <= next(
        e for e in events if e.get("guid") == 2 and e["state"] == "FINISHED").items()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    follow = subprocess.Popen([PY, "-m", "nepi_dist.cli", "logs", "cockpit-remote", ec.run_id, "2", "-f",
                               "--redis-url", url], stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(2)
    ec.shutdown()
    out, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0 and out.strip().splitlines()[-1].endswith("RELEASED")


@contextlib.contextmanager
def gated_app(tmp_path: Path, exp_id: str) -> Iterator[tuple[ExperimentController, int, Path]]:
    """An embedded run whose application prints a line, waits for the file it yields, prints another."""
    gate = tmp_path / "gate"
    ec = ExperimentController(exp_id=exp_id, redis_url=None)
    try:
        node = ec.register_resource("linux::Node")
        app = ec.register_resource("linux::Application")
        wait = f"until [ -e {shlex.quote(str(gate))} ]; do sleep 0.1; done"
        ec.set(app, "command", f"echo first-tail-line; {wait}; echo second-tail-line")
        ec.enable_trace(app, "stdout")
        ec.register_connection(app, node)
        ec.deploy()
        ec.wait_started([app], timeout=60)
        yield ec, app, gate
    finally:
        gate.touch()
        ec.shutdown()


def follow_trace(ec: ExperimentController, app: int, tmp_path: Path) -> subprocess.Popen[str]:
    """``nepi-dist logs EXP RUN APP stdout -f`` in a process group of its own."""
    return start_in_own_group([PY, "-m", "nepi_dist.cli", "logs", ec.exp_id, ec.run_id, str(app), "stdout", "-f",
                               "--redis-url", ec.redis_url], tmp_path)


def test_logs_follow_of_a_trace_prints_each_new_line_once_in_order_and_exits_0_once_the_app_ends(
        tmp_path: Path) -> None:
    with gated_app(tmp_path, "cockpit-tail") as (ec, app, gate):
        follow = follow_trace(ec, app, tmp_path)
        try:
            assert follow.stdout is not None
            first = follow.stdout.readline()
            assert first == "first-tail-line\n"
            time.sleep(1.5)  # a read or more of the trace, unchanged: nothing printed twice
            assert follow.poll() is None  # following, not done
            gate.touch()
            rest, err = follow.communicate(timeout=30)
        finally:
            if follow.poll() is None:
                os.killpg(follow.pid, signal.SIGKILL)
        assert follow.returncode == 0, err
        assert first + rest == "first-tail-line\nsecond-tail-line\n"
        assert ec.state(app) == ResourceState.FINISHED  # it ended with its RM, the run still live


def test_ctrl_c_on_logs_follow_of_a_trace_exits_130_without_a_traceback(tmp_path: Path) -> None:
    with gated_app(tmp_path, "cockpit-tail-c") as (ec, app, _):
        follow = follow_trace(ec, app, tmp_path)
        try:
            assert follow.stdout is not None and follow.stdout.readline() == "first-tail-line\n"
            os.killpg(follow.pid, signal.SIGINT)
            _, err = follow.communicate(timeout=30)
        finally:
            if follow.poll() is None:
                os.killpg(follow.pid, signal.SIGKILL)
        assert follow.returncode == 130 and err == "", err


def test_watch_follows_a_run_and_exits_with_its_code_once_released(
        remote_run: tuple[str, ExperimentController]) -> None:
    url, ec = remote_run
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    watch = subprocess.Popen([PY, "-m", "nepi_dist.cli", "watch", "cockpit-remote", "--redis-url", url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)
    assert watch.poll() is None
    ec.shutdown()
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "FINISHED" in out and "failed (1)" in out and "ErrorApplication" in out


def test_abort_ends_a_live_run_from_another_process_and_clean_deletes_it(
        remote_run: tuple[str, ExperimentController]) -> None:
    url, ec = remote_run
    refused = cli("clean", "cockpit-remote", ec.run_id, "--redis-url", url)
    assert refused.returncode == 2 and "is live" in refused.stderr
    aborted = cli("abort", "cockpit-remote", ec.run_id, "--redis-url", url)
    assert aborted.returncode == 0, aborted.stderr
    assert ec.abort
    assert all(s == ResourceState.RELEASED for s in ec.store.states(ec.store.guids()))
    status = cli("status", "cockpit-remote", ec.run_id, "--json", "--redis-url", url)
    assert status.returncode == 2 and json.loads(status.stdout)["failure_level"] == "EC_FAILURE"
    cleaned = cli("clean", "cockpit-remote", "--redis-url", url)
    assert cleaned.returncode == 0 and "1 run(s) deleted" in cleaned.stdout
    assert list(ec.store.client.scan_iter(match=ec.store.keys.pattern())) == []
    ec.store.freeze({"rms": {}, "conns": {}, "tasks": {}, "run": {}})  # nothing left to release
    ec._stop_machinery()


def test_workers_lists_celery_names_and_a_task_shows_its_readable_name(redis_server: EmbeddedRedis) -> None:
    from .conftest import start_worker_process, stop_process, wait_for_workers

    procs = [start_worker_process(redis_server.url, "w1")]
    try:
        wait_for_workers(redis_server.url, 1)
        ec = ExperimentController(exp_id="cockpit-names", redis_url=redis_server.url)
        try:
            g = ec.register_resource("Plain")
            ec.deploy()
            ec.wait_finished([g], timeout=30)
        finally:
            ec.shutdown()
        out = cli("workers", "--redis-url", redis_server.url)
        assert "w1@" in out.stdout.splitlines()[0], out.stdout
    finally:
        for p in procs:
            stop_process(p)
    # No worker now: the next message stays in the queue, where its headers can be read.
    ec = ExperimentController(exp_id="cockpit-names", redis_url=redis_server.url)
    try:
        g = ec.register_resource("Plain")
        ec.deploy()
        raw = ec.store.client.lrange("nepi.pool", 0, -1)
        headers = [json.loads(m)["headers"] for m in raw]
        deploy = next(h for h in headers if h["shadow"] == "nepi.deploy")
        assert deploy["task"] == "nepi.action"
        assert deploy["argsrepr"].startswith(f"deploy guid={g} (Plain on nepi.pool) run=cockpit-names/")
    finally:
        ec._stop_machinery()


def test_a_failed_action_is_a_celery_failure_under_its_readable_name(redis_server: EmbeddedRedis) -> None:
    """What Flower shows, from the Celery events a ``nepi-dist worker -E`` sends."""
    import threading

    from nepi_dist.engine.celery_app import create_app

    from .conftest import start_worker_process, stop_process, wait_for_workers

    proc = start_worker_process(redis_server.url, "w1", 4, "-E")
    app = create_app(redis_server.url)
    seen: list[dict[str, object]] = []
    receiver_box: list[object] = []

    def capture() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            receiver_box.append(receiver)
            with contextlib.suppress(Exception):  # the capture ends by a timeout or should_stop
                receiver.capture(limit=None, timeout=30, wakeup=False)

    thread = threading.Thread(target=capture, daemon=True)
    try:
        wait_for_workers(redis_server.url, 1)
        thread.start()
        time.sleep(1.0)  # the receiver's queue is bound
        ec = ExperimentController(exp_id="cockpit-events", redis_url=redis_server.url)
        try:
            g = ec.register_resource("FailingStart")
            ec.deploy()
            ec.wait_finished([g], timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(e.get("type") == "task-failed" for e in seen):
                time.sleep(0.1)
        finally:
            ec.shutdown()
    finally:
        if receiver_box:
            receiver_box[0].should_stop = True  # type: ignore[attr-defined]
        stop_process(proc)
        app.close()
    received = {e["uuid"]: e for e in seen if e.get("type") == "task-received"}
    failed = [e for e in seen if e.get("type") == "task-failed"]
    assert failed, [e.get("type") for e in seen]
    start = received[failed[0]["uuid"]]
    assert start["name"] == "nepi.start"
    assert str(start["args"]).startswith(f"start guid={g} (FailingStart on nepi.pool) run=cockpit-events/")
    assert "ActionFailedError" in str(failed[0]["exception"]) and f"guid={g}" in str(failed[0]["exception"])
    succeeded = {e["uuid"] for e in seen if e.get("type") == "task-succeeded"}
    assert failed[0]["uuid"] not in succeeded


def test_results_writes_every_enabled_trace_and_plot_draws_one_bar_per_state_interval(
        tmp_path: Path) -> None:
    from nepi_dist.cli.results import intervals, timeline
    from nepi_dist.engine.report import rows

    ec = ExperimentController(exp_id="cockpit-results", redis_url=None)
    try:
        node = ec.register_resource("linux::Node")
        apps = []
        for command in ("echo hello-results", "echo oops >&2; exit 4"):
            app = ec.register_resource("linux::Application")
            ec.set(app, "command", command)
            ec.set(app, "critical", False)
            ec.enable_trace(app, "stdout")
            ec.register_connection(app, node)
            apps.append(app)
        ec.deploy()
        ec.wait_finished(apps, timeout=60)
        got = cli("results", "cockpit-results", "-o", str(tmp_path / "res"), "--redis-url", ec.redis_url)
        assert got.returncode == 0, got.stderr
        folder = tmp_path / "res" / "cockpit-results" / ec.run_id
        assert sorted(p.name for p in folder.iterdir()) == [f"{apps[0]}-linux-Application.stdout",
                                                            f"{apps[1]}-linux-Application.stdout"]
        assert (folder / f"{apps[0]}-linux-Application.stdout").read_text() == "hello-results\n"
        drawn = cli("plot", "cockpit-results", "-o", str(tmp_path / "t.svg"), "--json", "--redis-url", ec.redis_url)
        assert drawn.returncode == 0, drawn.stderr
        assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
        bars = json.loads(drawn.stdout)
        found = rows(ec.store)
        end = max(t for r in found for t in r.times.values())
        expected = [(r.guid, s) for r in found for s, a, b in intervals(r, end) if b > a]
        assert [(b["guid"], ResourceState[b["state"]]) for b in bars] == expected
        # The figure itself: one drawn rectangle per interval, labelled guid:STATE, and an x on the failure.
        fig = timeline(found, "t")
        (ax,) = fig.axes
        rects = [p.get_gid() for p in ax.patches if p.get_gid()]
        assert rects == [f"{g}:{ResourceState(s).name}" for g, s in expected]
        assert [line.get_gid() for line in ax.lines] == [f"{apps[1]}:failed"]
        # --graph: one dot per RM, one line per connection.
        shown = cli("plot", "cockpit-results", "--graph", "-o", str(tmp_path / "g.png"), "--json",
                    "--redis-url", ec.redis_url)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == {"resources": [node, *apps], "connections": [[node, a] for a in apps]}
        from nepi_dist.cli.results import graph

        (gax,) = graph(found, {r.guid: ec.store.connections(r.guid) for r in found}, "g").axes
        dots = next(c for c in gax.collections if c.get_gid() == "resources")
        lines = next(c for c in gax.collections if c.get_gid() == "connections")
        assert len(dots.get_offsets()) == 3 and len(lines.get_segments()) == 2
    finally:
        ec.shutdown()
