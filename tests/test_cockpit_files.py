"""``nepi-dist run EXPERIMENT.yaml``: the experiment file (issue 10's nepi_dist.experiment) through the
command, as a subprocess against real runs: parameters, runs, a resumed sweep, bad files, exit codes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers
from .test_cockpit import gone, in_own_group, processes_with, unique_seconds

FILE = """
version: 1
exp_id: cockpit-file
parameters:
  word: {default: hello, help: what to echo}
  n: {type: integer, default: 1}
sweep:
  n: [1, 2, 3]
resources:
  node: {type: LinuxNode}
  app:
    type: LinuxApplication
    attributes: {command: "echo {{ word }} {{ n }}"}
    traces: [stdout]
connections:
  - [app, node]
"""


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "nepi_dist.cli", *args], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=str(ROOT))


@pytest.fixture
def experiment_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(FILE))
    return path


def test_a_file_run_takes_its_parameters_and_exits_0_with_its_json_summary(experiment_file: Path) -> None:
    out = cli("run", "--json", "--param", "word=bye", "--runs", "2", str(experiment_file))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["exit_code"] == 0 and len(summary["runs"]) == 2
    assert {r["exp_id"] for r in summary["runs"]} == {"cockpit-file"}
    for run in summary["runs"]:
        app = next(r for r in run["resources"] if r["rtype"] == "linux::Application")
        assert app["command"] == "echo bye 1" and "FINISHED" in app["times"]


def test_an_undeclared_parameter_or_a_malformed_file_exits_2_saying_why(experiment_file: Path, tmp_path: Path) -> None:
    out = cli("run", "--param", "nope=1", str(experiment_file))
    assert out.returncode == 2 and "declares no parameter nope (it has: n, word)" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nresources: 3\n")
    out = cli("run", str(bad))
    assert out.returncode == 2 and "$.resources" in out.stderr
    out = cli("run", "--param", "n=many", str(experiment_file))
    assert out.returncode == 2 and "n" in out.stderr


def test_a_failing_file_run_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "fail.yaml"
    path.write_text(textwrap.dedent(FILE).replace('"echo {{ word }} {{ n }}"', '"exit 5"'))
    out = cli("run", str(path))
    assert out.returncode == 1, out.stderr
    assert "FAILED linux::Application guid 2 on localhost running 'exit 5': command exited 5" in out.stdout


LONG_FILE = """
version: 1
exp_id: cockpit-file-long
resources:
  node: {{type: LinuxNode}}
  app1: {{type: LinuxApplication, attributes: {{command: {command}}}}}
  app2: {{type: LinuxApplication, attributes: {{command: {command}}}}}
connections:
  - [app1, node]
  - [app2, node]
"""


def long_file(tmp_path: Path, command: str) -> Path:
    """An experiment file of two applications running ``command`` on localhost."""
    path = tmp_path / "long.yaml"
    path.write_text(LONG_FILE.format(command=json.dumps(command)))
    return path


def test_ctrl_c_on_a_file_run_releases_everything_and_leaves_nothing_behind(tmp_path: Path) -> None:
    seconds = unique_seconds()
    marker = f"sleep {seconds}"
    path = long_file(tmp_path, marker)
    with in_own_group([sys.executable, "-m", "nepi_dist.cli", "run", str(path)], tmp_path, left=marker) as proc:
        deadline = time.monotonic() + 60
        while len([p for p in processes_with(marker) if p[2] == marker]) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert len([p for p in processes_with(marker) if p[2] == marker]) == 2
        servers = [p for p in processes_with("redis-server") if p[1] == proc.pid]
        assert len(servers) == 1, servers  # the run's embedded Redis, a child of the command
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: releasing every open run" in err and "Traceback" not in err
    assert gone(marker) == [], "an application was left running"
    assert gone(servers[0][2]) == [], "the embedded redis-server was left running"


def test_detach_on_a_file_run_prints_the_run_and_returns_while_the_run_goes_on(
        two_workers: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    path = long_file(tmp_path, f"until [ -e {shlex.quote(str(gate))} ]; do sleep 0.1; done")
    try:
        out = cli("run", "--detach", str(path), env={"NEPI_DIST_REDIS_URL": two_workers})
        assert out.returncode == 0, out.stderr
        ids = json.loads(out.stdout.strip().splitlines()[-1])
        assert ids["exp_id"] == "cockpit-file-long" and ids["redis_url"] == two_workers
        ec = ExperimentController(ids["exp_id"], ids["run_id"], redis_url=two_workers)
        try:
            ec.wait_started([2, 3], timeout=60)  # deployed and started by the workers, after the command ended
            assert [ec.state(g) for g in (2, 3)] == [ResourceState.STARTED] * 2
            gate.touch()
            ec.wait_finished([2, 3], timeout=60)
            assert [ec.state(g) for g in (2, 3)] == [ResourceState.FINISHED] * 2
        finally:
            ec.shutdown()
    finally:
        gate.touch()


def test_a_relaunched_sweep_skips_the_points_already_done(redis_server: EmbeddedRedis,
                                                           experiment_file: Path) -> None:
    worker = start_worker_process(redis_server.url, "sweep")
    try:
        wait_for_workers(redis_server.url, 1)
        env = {"NEPI_DIST_REDIS_URL": redis_server.url}
        first = cli("run", "--sweep", "--json", str(experiment_file), env=env)
        assert first.returncode == 0, first.stderr
        assert [json.loads(r["resources"][1]["command"].split(" ", 2)[2]) for r in json.loads(first.stdout)["runs"]] \
            == [1, 2, 3]
        # One point's run is lost (deleted): the relaunch runs that one only.
        lost = json.loads(first.stdout)["runs"][1]
        assert cli("clean", "cockpit-file", lost["run_id"], env=env).returncode == 0
        again = cli("run", "--sweep", "--json", str(experiment_file), env=env)
        assert again.returncode == 0, again.stderr
        (rerun,) = json.loads(again.stdout)["runs"]
        assert rerun["resources"][1]["command"] == "echo hello 2"
        assert again.stderr.count("done already: skipped") == 2
        listing = json.loads(cli("ls", "--json", "--exp", "cockpit-file", env=env).stdout)
        assert len(listing) == 3
        done = cli("run", "--sweep", str(experiment_file), env=env)
        assert done.returncode == 0 and done.stderr.count("done already: skipped") == 3
    finally:
        stop_process(worker)


def run_until_converged(tmp_path: Path, command: str, min_runs: int, runs: int, metric: str) -> dict[str, Any]:
    """Run FILE with its app's command replaced by ``command``, ``--until-converged`` between
    ``min_runs`` and ``runs`` on the metric ``metric``; return the ``--json`` summary (exit 0 checked)."""
    path = tmp_path / "converge.yaml"
    path.write_text(textwrap.dedent(FILE).replace('"echo {{ word }} {{ n }}"', json.dumps(command)))
    out = cli("run", "--json", "--until-converged", "--min-runs", str(min_runs), "--runs", str(runs),
              "--metric", metric, str(path))
    assert out.returncode == 0, out.stderr
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


def test_until_converged_stops_once_a_steady_metric_converges(tmp_path: Path) -> None:
    summary = run_until_converged(tmp_path, "echo value 10", min_runs=3, runs=6, metric="app.stdout:value ([0-9.]+)")
    assert len(summary["runs"]) == 3
    assert len({r["run_id"] for r in summary["runs"]}) == 3 and {r["exp_id"] for r in summary["runs"]} == {
        "cockpit-file"}
    assert summary["convergence"] == ["converged after 3 runs: metric 10 ± 0 (95%)"]


def test_until_converged_stops_at_its_run_cap_when_the_metric_scatters(tmp_path: Path) -> None:
    # Run k prints 100·k³ (100, 800, 2700): no two runs agree, whatever the draw (a random one converged 1 in 30).
    count = shlex.quote(str(tmp_path / "count"))
    scatter = f"n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}; echo value $((100*n*n*n))"
    summary = run_until_converged(tmp_path, scatter, min_runs=2, runs=3, metric="app.stdout:value ([0-9]+)")
    assert [r["failure_level"] for r in summary["runs"]] == ["OK"] * 3
    assert summary["convergence"][0].startswith("did not converge in 3 runs: metric ")


def test_until_converged_refuses_a_bad_metric_before_any_run(experiment_file: Path) -> None:
    for spec, why in (("app:x([0-9])", "LABEL.TRACE:REGEX"), ("app.stdout:[0-9]+", "needs exactly one"),
                      ("app.stdout:([0-9]", "does not compile")):
        out = cli("run", "--until-converged", "--metric", spec, str(experiment_file))
        assert out.returncode == 2 and why in out.stderr, (spec, out.stderr)
        assert "run " not in out.stdout
    out = cli("run", "--metric", "app.stdout:v([0-9])", str(experiment_file))
    assert out.returncode == 2 and "--metric is the metric of --until-converged" in out.stderr
    out = cli("run", "--until-converged", "--metric", "nothere.stdout:v ([0-9])", str(experiment_file))
    assert out.returncode == 2 and "no resource labelled 'nothere'" in out.stderr
