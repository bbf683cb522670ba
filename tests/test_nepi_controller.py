"""NEPI 3.1's controller extras: local_dir / exp_dir / run_dir, persist, globals, lookups by type, state times."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from nepi_dist import (
    AttributeValueError,
    ExperimentController,
    FailureLevel,
    ReadOnlyAttributeError,
    UnknownAttributeError,
    UnknownResourceTypeError,
)
from nepi_dist.model.attribute import Attribute
from nepi_dist.model.trace import Trace


def test_exp_dir_and_run_dir_sit_under_the_local_dir_given(tmp_path: Path) -> None:
    with ExperimentController(exp_id="dirs", nthreads=4, local_dir=str(tmp_path / "x" / ".." / "res")) as ec:
        assert ec.local_dir == str(tmp_path / "res")
        assert ec.exp_dir == str(tmp_path / "res" / "dirs")
        assert ec.run_dir == str(tmp_path / "res" / "dirs" / ec.run_id)
        assert not os.path.exists(ec.exp_dir), "nothing is created before a run writes there"


def test_the_default_local_dir_is_the_results_variable_else_the_temporary_folder_as_nepi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEPI_DIST_RESULTS_DIR", raising=False)
    with ExperimentController(nthreads=4) as ec:
        assert ec.local_dir == tempfile.gettempdir()
    monkeypatch.setenv("NEPI_DIST_RESULTS_DIR", str(tmp_path))
    with ExperimentController(nthreads=4) as ec:
        assert ec.run_dir == str(tmp_path / ec.exp_id / ec.run_id)


def test_a_workers_view_of_the_run_has_the_controllers_run_dir(tmp_path: Path) -> None:
    with ExperimentController(nthreads=4, local_dir=tmp_path) as ec:
        plain = ec.register_resource("Plain")
        assert ec.get_resource(plain).ec.run_dir == ec.run_dir
        from nepi_dist.engine.context import RunContext

        seen_by_worker = RunContext(ec.store, ec.app, ec.registry)
        assert seen_by_worker.run_dir == ec.run_dir == str(tmp_path / ec.exp_id / ec.run_id)


@pytest.mark.parametrize(("kwargs", "why"), [({"local_dir": 3}, "local_dir is a path"),
                                             ({"persist": "yes"}, "persist is a bool")])
def test_a_bad_local_dir_or_persist_is_a_type_error(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(TypeError, match=why):
        ExperimentController(**kwargs)  # type: ignore[arg-type]


def test_persist_saves_the_description_into_the_run_dir_at_release(tmp_path: Path) -> None:
    ec = ExperimentController(exp_id="kept", nthreads=4, local_dir=tmp_path, persist=True)
    plain = ec.register_resource("Plain")
    ec.set(plain, "mode", "b")
    ec.deploy()
    ec.wait_finished(plain, timeout=30)
    ec.shutdown()
    saved = yaml.safe_load((tmp_path / "kept" / ec.run_id / "kept.yaml").read_text())
    assert saved["resources"]["plain-1"]["attributes"] == {"mode": "b"}


def test_resources_are_found_by_type_under_ours_or_nepis_name(ec: ExperimentController) -> None:
    apps = [ec.register_resource("LinuxApplication") for _ in range(2)]
    node = ec.register_resource("linux::Node")
    assert ec.filter_resources("LinuxApplication") == ec.filter_resources("linux::Application") == apps
    assert [rm.guid for rm in ec.get_resources_by_type("LinuxNode")] == [node]
    assert ec.filter_resources("Collector") == []
    with pytest.raises(UnknownResourceTypeError):
        ec.filter_resources("NoSuch")


def test_a_global_starts_every_later_rm_of_its_type_and_not_the_earlier_ones(ec: ExperimentController) -> None:
    before = ec.register_resource("Plain")
    assert ec.get_global("Plain", "mode") == "a", "unset: the declared default"
    assert ec.set_global("Plain", "mode", "b") == "b"
    after = ec.register_resource("Plain")
    other = ec.register_resource("SlowDeploy")
    assert ec.get_global("Plain", "mode") == "b"
    assert (ec.get(before, "mode"), ec.get(after, "mode"), ec.get(other, "mode")) == ("a", "b", "a")
    ec.set(after, "mode", "a")
    assert ec.get(after, "mode") == "a", "an RM's own value wins over the global"


def test_a_bad_global_is_a_typed_error_and_changes_nothing(ec: ExperimentController) -> None:
    with pytest.raises(AttributeValueError):
        ec.set_global("Plain", "mode", "c")
    with pytest.raises(ReadOnlyAttributeError):
        ec.set_global("Plain", "serial", "x")
    with pytest.raises(UnknownAttributeError):
        ec.get_global("Plain", "colour")
    assert not any(f.startswith("g:") for f in ec.store.run_fields())
    assert ec.get(ec.register_resource("Plain"), "mode") == "a"


def test_each_state_time_is_when_the_rm_entered_that_state(ec: ExperimentController) -> None:
    plain = ec.register_resource("Plain")
    failing = ec.register_resource("FailingStart")
    ec.set(failing, "critical", False)
    ec.deploy()
    ec.wait_finished([plain, failing], timeout=30)
    times = [ec.get_discover_time(plain), ec.get_provision_time(plain), ec.get_ready_time(plain),
             ec.get_start_time(plain), ec.get_finish_time(plain)]
    assert all(t is not None for t in times) and times == sorted(times)  # type: ignore[type-var]
    assert ec.get_stop_time(plain) is None and ec.get_failed_time(plain) is None
    assert ec.get_failed_time(failing) is not None and ec.get_start_time(failing) is None
    assert ec.failure_level == FailureLevel.OK, "a non-critical failure leaves the run OK"
    ec.release()
    assert ec.get_release_time(plain) >= ec.get_finish_time(plain)  # type: ignore[operator]


def test_the_failure_level_is_nepis_rm_failure_once_a_critical_rm_failed(ec: ExperimentController) -> None:
    failing = ec.register_resource("FailingStart")
    assert ec.failure_level == FailureLevel.OK
    ec.deploy()
    ec.wait_finished(failing, timeout=30)
    assert ec.failure_level == FailureLevel.RM_FAILURE and ec.abort


def test_an_rms_attribute_and_traces_are_its_types_declarations(ec: ExperimentController) -> None:
    app = ec.register_resource("LinuxApplication")
    assert isinstance(ec.get_attribute(app, "command"), Attribute)
    traces = ec.get_traces(app)
    assert all(isinstance(t, Trace) for t in traces) and {"stdout", "stderr"} <= {t.name for t in traces}
    assert ec.nthreads == 20
