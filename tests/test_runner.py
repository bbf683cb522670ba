"""ExperimentRunner: each run a fresh run_id of the same exp_id, NEPI's convergence rule, a NEPI-style multi-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from nepi.execution.runner import ExperimentRunner as NepiRunner
from nepi_dist import ExperimentController, ResourceState, RunnerError
from nepi_dist.experiment import ExperimentRunner

from .conftest import ROOT


def test_nepis_rule_converges_once_twice_the_standard_error_is_within_five_percent_of_the_mean() -> None:
    rule = ExperimentRunner.evaluate_normal_convergence
    assert rule(None, 3, [10.0, 10.0, 10.0])  # type: ignore[arg-type]
    assert not rule(None, 2, [1.0, 100.0])  # type: ignore[arg-type]
    # mean 100, pstdev 5, n 4: 2 * 5 / 2 = 5 <= 5: converged; one more spread and it is not
    assert rule(None, 4, [95.0, 105.0, 95.0, 105.0])  # type: ignore[arg-type]
    assert not rule(None, 4, [94.0, 106.0, 94.0, 106.0])  # type: ignore[arg-type]
    with pytest.raises(RunnerError, match="0 samples"):
        rule(None, 1, [])  # type: ignore[arg-type]


def test_nepis_import_path_is_our_runner() -> None:
    assert NepiRunner is ExperimentRunner


@pytest.mark.parametrize(("kwargs", "error", "why"), [
    ({}, RunnerError, "no stop condition"),
    ({"min_runs": 3, "max_runs": 2}, RunnerError, "below min_runs"),
    ({"max_runs": 1.5}, TypeError, "max_runs is an int"),
    ({"max_runs": 1, "wait_time": -1}, TypeError, "wait_time"),
    ({"max_runs": 1, "compute_metric_callback": 3}, TypeError, "callable"),
])
def test_a_runner_with_no_way_to_stop_or_bad_bounds_refuses_before_any_run(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], why: str
) -> None:
    ec = ExperimentController(nthreads=4, local_dir=tmp_path)
    try:
        ec.register_resource("Plain")
        with pytest.raises(error, match=why):
            ExperimentRunner().run(ec, **kwargs)
        assert ec.state(1) == ResourceState.NEW
    finally:
        ec.shutdown()
    assert not (tmp_path / ec.exp_id).exists()


def test_max_runs_makes_that_many_runs_each_a_fresh_run_id_of_the_same_exp_id_with_its_own_folder(
    tmp_path: Path
) -> None:
    ec = ExperimentController(exp_id="three", nthreads=4, local_dir=tmp_path)
    plain = ec.register_resource("Plain", guid=5)
    ec.set(plain, "runtime", 0.1)
    seen: list[tuple[int, str, str, int]] = []

    def metric(run_ec: ExperimentController, run: int) -> None:
        seen.append((run, run_ec.exp_id, run_ec.run_id, int(run_ec.state(plain))))

    assert ExperimentRunner().run(ec, max_runs=3, wait_guids=[plain], compute_metric_callback=metric) == 3
    assert [s[0] for s in seen] == [1, 2, 3]
    assert {s[1] for s in seen} == {"three"} and len({s[2] for s in seen}) == 3
    assert seen[0][2] == ec.run_id, "the controller given is the first run"
    assert all(s[3] == ResourceState.RELEASED for s in seen), "the metric is taken after the release"
    folders = sorted(p.name for p in (tmp_path / "three").iterdir())
    assert folders == sorted(s[2] for s in seen)
    for name in folders:
        saved = yaml.safe_load((tmp_path / "three" / name / "three.yaml").read_text())
        assert saved["resources"] == {"plain-5": {"type": "Plain", "guid": 5, "attributes": {"runtime": 0.1}}}


def test_a_converging_metric_stops_the_runs_at_min_runs(tmp_path: Path) -> None:
    ec = ExperimentController(nthreads=4, local_dir=tmp_path)
    ec.register_resource("Plain")
    runs = ExperimentRunner().run(ec, min_runs=2, compute_metric_callback=lambda e, r: 42.0)
    assert runs == 2
    assert len(list((tmp_path / ec.exp_id).iterdir())) == 2


def test_a_nepi_style_multirun_script_collects_each_runs_stdout_into_its_own_folder(tmp_path: Path) -> None:
    script = ROOT / "tests" / "nepi_scripts" / "multirun_collector.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NEPI_DIST_REDIS_URL", None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runs"] == 3
    assert result["exp_dir"] == str(tmp_path / "multirun-collector")
    folders = result["folders"]
    assert sorted(folders) == sorted(run_id for _, run_id, _ in result["seen"])
    outputs = []
    for run, run_id, stdout in result["seen"]:
        files = folders[run_id]
        assert set(files) == {"application-2.stdout", "multirun-collector.yaml"}, files
        assert files["application-2.stdout"] == stdout and stdout.startswith("run "), (run, files)
        outputs.append(stdout)
    assert len(set(outputs)) == 3, "each run ran the application again"
