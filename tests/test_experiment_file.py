"""The experiment file: save/load round trips, parameters and sweeps, and bad files refused by name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.errors import ExperimentFileError
from nepi_dist.experiment import Experiment, parse_experiment, read_experiment, schema
from nepi_dist.experiment.describe import describe

EXAMPLE = """
version: 1
exp_id: ping-sweep
parameters:
  count: {type: integer, default: 3, help: pings per run}
  target: {default: 127.0.0.1}
  quiet: {type: boolean, default: false}
sweep:
  count: [1, 2]
  target: [127.0.0.1, "::1"]
resources:
  node:
    type: LinuxNode
    attributes: {hostname: localhost}
  ping:
    type: LinuxApplication
    guid: 7
    attributes:
      command: "ping -c {{ count }} {{target}} # quiet={{ quiet }}"
      env: {literal: "A={{ not_a_parameter }}"}
    traces: [stdout]
  plain:
    type: Plain
    attributes: {count: "{{ count }}", runtime: 0}
connections:
  - [ping, node]
conditions:
  - {resources: [plain], action: START, after: [ping], state: STARTED, time: 1s}
"""


@pytest.fixture
def example(tmp_path: Path) -> Path:
    path = tmp_path / "ping.yaml"
    path.write_text(EXAMPLE)
    return path


def _ec_with_everything(ec: ExperimentController) -> None:
    """Describe in a script what a file can hold: globals, attributes, traces, connections, conditions."""
    ec.set_global("Plain", "mode", "b")
    node = ec.register_resource("LinuxNode")
    ec.set(node, "hostname", "localhost")
    app = ec.register_resource("LinuxApplication")
    ec.set(app, "command", "echo '{{ braces }}' ${HOME}")
    ec.enable_trace(app, "stdout")
    ec.register_connection(app, node)
    plain = ec.register_resource("Plain", guid=40)
    ec.set(plain, "count", 4)
    ec.set(plain, "runtime", 0.5)
    ec.register_condition(plain, ResourceAction.START, [app, node], ResourceState.STARTED, "2s")
    ec.register_condition(plain, ResourceAction.STOP, app, ResourceState.FINISHED)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_then_load_then_save_writes_the_same_file(
    ec: ExperimentController, tmp_path: Path, suffix: str
) -> None:
    _ec_with_everything(ec)
    first = Path(ec.save(tmp_path / f"first{suffix}"))
    before = describe(ec)
    again = ExperimentController.load(first, nthreads=4)
    try:
        assert again.exp_id == ec.exp_id and again.run_id != ec.run_id
        assert again.resources == ec.resources == [1, 2, 40]
        assert describe(again) == before
        second = Path(again.save(tmp_path / f"second{suffix}"))
        assert second.read_text() == first.read_text()
        assert again.get(40, "mode") == "b", "the global reached the Plain registered after it"
        assert again.get(2, "command") == "echo '{{ braces }}' ${HOME}", "a literal stays as it is"
        assert again.trace_enabled(2, "stdout")
        assert again.get_resource(40).conditions[ResourceAction.START] == [([2, 1], ResourceState.STARTED, "2s")]
    finally:
        again.shutdown()


def test_a_save_into_a_folder_names_the_file_after_the_experiment(ec: ExperimentController, tmp_path: Path) -> None:
    ec.register_resource("Plain")
    path = ec.save(tmp_path / "out")
    assert path == str(tmp_path / "out" / f"{ec.exp_id}.yaml")
    assert yaml.safe_load(Path(path).read_text())["resources"] == {"plain-1": {"type": "Plain", "guid": 1}}
    assert ec.save(tmp_path, format="json").endswith(f"{ec.exp_id}.json")


def test_a_file_builds_with_its_defaults_and_labels(ec: ExperimentController, example: Path) -> None:
    exp = read_experiment(example)
    guids = exp.build(ec)
    assert guids == {"ping": 7, "node": 8, "plain": 9}, "a guid given first, then the others in file order"
    assert ec.get(7, "command") == "ping -c 3 127.0.0.1 # quiet=false"
    assert ec.get(7, "env") == "A={{ not_a_parameter }}"
    assert ec.get(9, "count") == 3, "a whole-value reference takes the parameter's typed value"
    assert ec.get_resource(7).label == "ping"
    assert ec.get_resource(7).connections == {8}
    assert ec.get_resource(9).conditions[ResourceAction.START] == [([7], ResourceState.STARTED, "1s")]


def test_given_parameter_values_win_and_text_is_converted_to_the_parameters_type(
    ec: ExperimentController, example: Path
) -> None:
    read_experiment(example).build(ec, {"count": "5", "quiet": "true", "target": "::1"})
    assert ec.get(7, "command") == "ping -c 5 ::1 # quiet=true"
    assert ec.get(9, "count") == 5
    assert json.loads(ec.store.run_field("params") or "") == {"count": 5, "quiet": True, "target": "::1"}


def test_the_api_the_cli_uses_shows_parameters_and_the_sweeps_cartesian_product(example: Path) -> None:
    exp = read_experiment(example)
    assert {n: (p.type, p.default, p.help) for n, p in exp.parameters.items()} == {
        "count": ("integer", 3, "pings per run"), "target": ("string", "127.0.0.1", ""),
        "quiet": ("boolean", False, "")}
    assert exp.sweep == {"count": [1, 2], "target": ["127.0.0.1", "::1"]}
    assert exp.points() == [{"count": 1, "target": "127.0.0.1"}, {"count": 1, "target": "::1"},
                            {"count": 2, "target": "127.0.0.1"}, {"count": 2, "target": "::1"}]
    assert exp.exp_id == "ping-sweep" and exp.labels == ["node", "ping", "plain"]


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE)
    doc.update(changes)
    return doc


BAD_DOCS = [
    (_doc(version=2), "$.version", "1 was expected"),
    (_doc(extra=1), "$", "Additional properties"),
    (_doc(exp_id="has space"), "$.exp_id", "does not match"),
    (_doc(connections=[["ping", "nobody"]]), "$.connections[0][1]", "no resource is labelled 'nobody'"),
    (_doc(connections=[["ping", "ping"]]), "$.connections[0]", "not to itself"),
    (_doc(conditions=[{"resources": ["ping"], "action": "START", "after": ["x"], "state": "READY"}]),
     "$.conditions[0].after[0]", "no resource is labelled 'x'"),
    (_doc(conditions=[{"resources": ["ping"], "action": "RUN", "after": ["node"], "state": "READY"}]),
     "$.conditions[0].action", "'RUN' is not one of"),
    (_doc(sweep={"nope": [1]}), "$.sweep.nope", "not a declared parameter"),
    (_doc(sweep={"count": ["many"]}), "$.sweep.count[0]", "expects an integer"),
    (_doc(parameters={"count": {"type": "integer", "default": "3"}}), "$.parameters.count.default",
     "expects an integer"),
    (_doc(parameters={"count": {"help": "no type, no default"}}), "$.parameters.count", "is not valid"),
    (_doc(resources={"a": {"type": "Plain", "attributes": {"label": "{{ nope }}"}}}),
     "$.resources.a.attributes.label", "unknown parameter 'nope'"),
    (_doc(resources={"a": {"type": "Plain", "guid": 2}, "b": {"type": "Plain", "guid": 2}}),
     "$.resources.b.guid", "also the guid of 'a'"),
    (_doc(resources={"a b": {"type": "Plain"}}), "$.resources", "does not match"),
    (_doc(resources={"a": {"type": "Plain", "guid": 0}}), "$.resources.a.guid", "less than the minimum"),
    (_doc(resources={"a": {"type": "Plain", "attributes": {"x": [1]}}}), "$.resources.a.attributes.x",
     "is not valid"),
]


@pytest.mark.parametrize(("doc", "path", "why"), BAD_DOCS, ids=[p + ":" + w for _, p, w in BAD_DOCS])
def test_a_document_that_breaks_the_format_is_an_error_naming_the_field(doc: Any, path: str, why: str) -> None:
    with pytest.raises(ExperimentFileError) as err:
        Experiment.from_document(doc)
    assert err.value.path == path and why in err.value.reason, str(err.value)


BAD_TEXTS = [
    ("version: 1\nresources: {a: {type: Plain}\n", "yaml", "$", "not valid YAML (line 3"),
    ("version: 1\nx: &a [1]\ny: *a\nresources: {}\n", "yaml", "$", "aliases"),
    ("version: 1\nresources: {a: {type: Plain}, a: {type: Plain}}\n", "yaml", "$", "written twice"),
    ("version: 1\nresources: {a: {type: !!python/object:os.system Plain}}\n", "yaml", "$", "not valid YAML"),
    ("version: 1\nexp_id: 2024-01-01\nresources: {}\n", "yaml", "$.exp_id", "a date is not a JSON value"),
    ("version: 1\nresources: {a: {type: Plain, attributes: {runtime: .nan}}}\n", "yaml",
     "$.resources.a.attributes.runtime", "not a finite number"),
    ('{"version": 1, "resources": {}, "version": 1}', "json", "$", "written twice"),
    ('{"version": 1, "resources": {"a": {"type": "Plain", "attributes": {"runtime": NaN}}}}', "json", "$",
     "NaN is not a JSON number"),
    ("[1, 2]", "json", "$", "is not of type 'object'"),
    ("", "yaml", "$", "is not of type 'object'"),
]


@pytest.mark.parametrize(("text", "fmt", "path", "why"), BAD_TEXTS, ids=[w for _, _, _, w in BAD_TEXTS])
def test_a_text_that_is_not_an_experiment_is_an_error_naming_the_field(
    text: str, fmt: str, path: str, why: str
) -> None:
    with pytest.raises(ExperimentFileError) as err:
        parse_experiment(text, fmt, "given.txt")
    assert err.value.path == path and why in err.value.reason, str(err.value)
    assert str(err.value).startswith(f"given.txt: {path}: ")


def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ExperimentFileError, match=r"unknown file suffix '\.txt'"):
        read_experiment(tmp_path / "x.txt")
    with pytest.raises(ExperimentFileError, match="cannot read the file"):
        read_experiment(tmp_path / "missing.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"version: 1\nexp_id: caf\xe9\n")
    with pytest.raises(ExperimentFileError, match="not UTF-8"):
        read_experiment(tmp_path / "latin.yaml")


BUILD_ERRORS = [
    ({"a": {"type": "NoSuchType"}}, None, "$.resources.a.type", "unknown resource type 'NoSuchType'"),
    ({"a": {"type": "Plain", "attributes": {"colour": 1}}}, None, "$.resources.a.attributes.colour",
     "no attribute 'colour'"),
    ({"a": {"type": "Plain", "attributes": {"count": 11}}}, None, "$.resources.a.attributes.count",
     "outside range"),
    ({"a": {"type": "Plain", "attributes": {"serial": "x"}}}, None, "$.resources.a.attributes.serial",
     "read-only"),
    ({"a": {"type": "Plain", "traces": ["stdout"]}}, None, "$.resources.a.traces[0]", "no trace 'stdout'"),
    ({"a": {"type": "Plain", "attributes": {"count": "{{ n }}"}}}, {"n": "ten"}, "$.parameters.n",
     "expects an integer"),
    ({"a": {"type": "Plain", "attributes": {"count": "{{ n }}"}}}, {"m": 1}, "$.parameters",
     "no parameter 'm' is declared"),
    ({"a": {"type": "Plain", "attributes": {"count": "{{ n }}"}}}, {}, "$.parameters.n", "has no default"),
]


@pytest.mark.parametrize(("resources", "params", "path", "why"), BUILD_ERRORS, ids=[w for *_, w in BUILD_ERRORS])
def test_a_build_that_does_not_fit_the_types_is_an_error_and_registers_nothing(
    ec: ExperimentController, resources: dict[str, Any], params: dict[str, Any] | None, path: str, why: str
) -> None:
    doc = {"version": 1, "parameters": {"n": {"type": "integer"}}, "resources": {"ok": {"type": "Plain"},
                                                                                  **resources}}
    with pytest.raises(ExperimentFileError) as err:
        Experiment.from_document(doc).build(ec, params if params is not None else {"n": 1})
    assert err.value.path == path and why in err.value.reason, str(err.value)
    assert ec.resources == []


def test_a_guid_already_taken_and_a_bad_condition_time_register_nothing(ec: ExperimentController) -> None:
    ec.register_resource("Plain", guid=3)
    taken = {"version": 1, "resources": {"b": {"type": "Plain"}, "a": {"type": "Plain", "guid": 3}}}
    with pytest.raises(ExperimentFileError, match=r"\$\.resources\.a\.guid: guid 3 is already registered"):
        Experiment.from_document(taken).build(ec)
    late = {"version": 1, "resources": {"a": {"type": "Plain"}, "b": {"type": "Plain"}},
            "conditions": [{"resources": ["a"], "action": "START", "after": ["b"], "state": "STARTED",
                            "time": "soon"}]}
    with pytest.raises(ExperimentFileError, match=r"\$\.conditions\[0\]\.time: malformed delay"):
        Experiment.from_document(late).build(ec)
    assert ec.resources == [3]


def _redis_children() -> set[int]:
    """The redis-server processes this test process started."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and comm.startswith("redis"):
            found.add(int(pid))
    return found


def test_a_load_of_a_bad_file_raises_and_leaves_no_controller_running(tmp_path: Path) -> None:
    before = _redis_children()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": 1, "resources": {"a": {"type": "Plain", "attributes": {"count": -1}}}}))
    with pytest.raises(ExperimentFileError, match="outside range"):
        ExperimentController.load(path, nthreads=4)
    assert _redis_children() <= before


def test_the_schema_is_valid_json_schema_and_documents_every_top_level_field() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    fields = schema()["properties"]
    assert set(fields) == {"version", "exp_id", "description", "parameters", "sweep", "globals", "resources",
                           "connections", "conditions"}
    assert all(spec.get("description") for spec in fields.values())


# -- fuzz: any text, any document: a typed error or a build, never anything else ------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["{{ count }}", "{{ nope }}", "Plain", "READY", "1s"]))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["type", "guid", "attributes", "traces", "count", "runtime", "mode", "label", "a", "b", "literal",
         "resources", "action", "after", "state", "time", "default"]), inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200), fmt=st.sampled_from(["yaml", "json"]))
def test_any_text_reads_as_an_experiment_or_is_an_experiment_file_error(text: str, fmt: str) -> None:
    try:
        parse_experiment(text, fmt)
    except ExperimentFileError as exc:
        assert exc.path.startswith("$") and exc.reason


@pytest.fixture(scope="module")
def fuzz_ec() -> Iterator[ExperimentController]:
    controller = ExperimentController(nthreads=4)
    try:
        yield controller
    finally:
        controller.shutdown()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["attributes", "resource", "top", "conditions", "connections"]), value=_json)
def test_a_fuzzed_document_builds_or_raises_a_typed_error_that_registers_nothing(
    fuzz_ec: ExperimentController, where: str, value: Any
) -> None:
    doc: dict[str, Any] = {"version": 1, "parameters": {"count": {"type": "integer", "default": 2}},
                           "resources": {"a": {"type": "Plain", "attributes": {"count": "{{ count }}"}},
                                         "b": {"type": "Plain"}}}
    if where == "attributes":
        doc["resources"]["a"]["attributes"]["runtime"] = value
    elif where == "resource":
        doc["resources"]["b"] = value
    elif where == "top":
        doc["sweep"] = value
    elif where == "conditions":
        doc["conditions"] = [value]
    else:
        doc["connections"] = value
    before = fuzz_ec.resources
    try:
        guids = Experiment.from_document(doc).build(fuzz_ec)
    except ExperimentFileError as exc:
        assert exc.path.startswith("$") and exc.reason
        assert fuzz_ec.resources == before
    else:
        assert sorted(fuzz_ec.resources) == sorted(before + list(guids.values()))


def test_a_collector_names_each_file_after_the_label_the_experiment_file_gave(tmp_path: Path) -> None:
    path = tmp_path / "hello.yaml"
    path.write_text("""
version: 1
exp_id: hello
resources:
  host: {type: LinuxNode, attributes: {hostname: localhost}}
  hello: {type: LinuxApplication, attributes: {command: "echo hello {{ who }}"}}
  other: {type: LinuxApplication, attributes: {command: "echo other"}}
  gather: {type: Collector, attributes: {traceName: stdout, subDir: out}}
parameters:
  who: {default: world}
connections: [[hello, host], [other, host], [gather, hello], [gather, other]]
""")
    ec = ExperimentController.load(path, {"who": "you"}, nthreads=8, local_dir=tmp_path / "results")
    try:
        ec.deploy()
        ec.wait_finished(ec.filter_resources("LinuxApplication"), timeout=60)
    finally:
        ec.shutdown()
    out = tmp_path / "results" / "hello" / ec.run_id / "out"
    assert sorted(p.name for p in out.iterdir()) == ["hello.stdout", "other.stdout"]
    assert (out / "hello.stdout").read_text() == "hello you\n"


def test_the_readme_example_reads_and_fits_the_types() -> None:
    from nepi_dist import ResourceFactory

    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    block = readme.split("### The experiment file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    exp = parse_experiment(block, "yaml", "README.md")
    exp.check(ResourceFactory, {"count": 5})
    assert exp.points() == [{"count": 1}, {"count": 5}, {"count": 10}]


NEPI_XML = """<?xml version="1.0" encoding="UTF-8"?>
<experiment exp_id="nepi-saved" nthreads="20" run_id="2014-02-10 12:00:00">
    <rm guid="1" rtype="LinuxNode" state="0">
        <attributes>
            <attribute name="hostname" type="string" value="localhost"/>
            <attribute name="cleanHome" type="bool" value="True"/>
        </attributes>
        <connections><connection guid="2"/></connections>
    </rm>
    <rm guid="2" rtype="LinuxApplication" state="3" ready_time="20140210120000000000">
        <attributes><attribute name="command" type="string" value="ping -c 3 127.0.0.1"/></attributes>
        <connections><connection guid="1"/></connections>
        <traces><trace name="stdout"/></traces>
    </rm>
    <rm guid="5" rtype="Plain" state="0">
        <attributes><attribute name="count" type="integer" value="4"/></attributes>
        <conditions><condition action="1" group="[2, 1]" state="4" time="2s"/></conditions>
    </rm>
</experiment>
"""


def test_nepi_31s_xml_file_loads_with_its_guids_attributes_traces_connections_and_conditions(
    tmp_path: Path
) -> None:
    path = tmp_path / "nepi-saved_20140210120000.xml"
    path.write_text(NEPI_XML)
    ec = ExperimentController.load(path, nthreads=4)
    try:
        assert ec.exp_id == "nepi-saved" and ec.resources == [1, 2, 5]
        assert (ec.get(1, "hostname"), ec.get(1, "cleanHome"), ec.get(5, "count")) == ("localhost", True, 4)
        assert ec.trace_enabled(2, "stdout") and ec.get_resource(1).connections == {2}
        assert ec.get_resource(5).conditions[ResourceAction.START] == [([2, 1], ResourceState.STARTED, "2s")]
        assert all(ec.state(g) == ResourceState.NEW for g in ec.resources)
        saved = yaml.safe_load(Path(ec.save(tmp_path / "ours.yaml")).read_text())
        assert list(saved["resources"]) == ["node-1", "application-2", "plain-5"]
    finally:
        ec.shutdown()


@pytest.mark.parametrize(("text", "path", "why"), [
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><experiment/>', "/", "declaration is not accepted"),
    ("<experiment><rm guid='1'", "/", "not valid XML"),
    ("<scenario/>", "/scenario", "root element"),
    ("<experiment><rm guid='x' rtype='Plain'/></experiment>", "/experiment/rm[1]@guid", "non-negative integer"),
    ("<experiment><rm guid='1' rtype='Plain'><conditions><condition action='1' group='__import__(\"os\")' "
     "state='4'/></conditions></rm></experiment>", "/experiment/rm[1]/conditions/condition[1]@group",
     "a list of guids"),
    ("<experiment><rm guid='1' rtype='Plain'><attributes><attribute name='count' type='integer' value='x'/>"
     "</attributes></rm></experiment>", "/experiment/rm[1]/attributes/attribute[1]@value", "invalid literal"),
])
def test_a_bad_nepi_xml_file_is_an_error_naming_the_element(text: str, path: str, why: str) -> None:
    with pytest.raises(ExperimentFileError) as err:
        parse_experiment(text, "xml")
    assert err.value.path == path and why in err.value.reason, str(err.value)
