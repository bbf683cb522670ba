"""NEPI's resource model: declared attributes and traces, the factory, conditions, states."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import pytest

import nepi_dist
from nepi_dist import (
    Attribute,
    ExperimentController,
    Flags,
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceRegistry,
    ResourceState,
    ResourceState2str,
    Trace,
    Types,
    clsinit,
    clsinit_copy,
)
from nepi_dist import errors as errors_module
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.errors import (
    NepiError,
    UnknownAttributeError,
    UnknownResourceTypeError,
    UnknownTraceError,
)

# -- a class hierarchy declared the NEPI way ------------------------------------------------


@clsinit_copy
class ModelBase(ResourceManager):
    _rtype = "ResourceModel.Base"
    _help = "A base resource of the model tests"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("size", "A size", type=Types.Integer, default=1, range=(0, None)))
        cls._register_attribute(Attribute("name", "A name", default="base"))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("log", "What happened", enabled=True))


@clsinit_copy
class ModelChild(ModelBase):
    _rtype = "ResourceModel.Child"
    _help = "A child resource of the model tests"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(
            Attribute("colour", "A colour", type=Types.Enumerate, allowed=["red", "blue"], default="red")
        )
        # re-declares an inherited attribute with another default
        cls._register_attribute(Attribute("name", "A name", default="child"))
        cls._register_attribute(
            Attribute("shout", "Stored upper-case", set_hook=lambda old, new: new.upper())
        )
        cls._register_attribute(
            Attribute(
                "total", "Adds up what is set", type=Types.Integer, default=0, set_hook=lambda old, new: old + new
            )
        )
        cls._register_attribute(Attribute("ratio", "A fraction", type=Types.Double, default=0.5))
        cls._register_attribute(Attribute("token", "A secret", flags=Flags.Credential))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("pcap", "Captured packets"))


@clsinit
class ModelGrandChild(ModelChild):
    """Declares nothing: inherits everything."""

    _rtype = "ResourceModel.GrandChild"


MODEL_TYPES: list[type[ResourceManager]] = [ModelBase, ModelChild, ModelGrandChild]
for _t in MODEL_TYPES:
    ResourceFactory.register_type(_t)


def names(items: Iterable[Any]) -> set[str]:
    return {item.name for item in items}


# -- declarations ----------------------------------------------------------------------------


def test_the_base_resource_manager_declares_only_critical() -> None:
    assert names(ResourceManager.get_attributes()) == {"critical"}
    assert ResourceManager.get_traces() == []


def test_a_subclass_inherits_its_parents_attributes_and_traces_and_adds_its_own() -> None:
    assert names(ModelBase.get_attributes()) == {"critical", "size", "name"}
    assert names(ModelChild.get_attributes()) == {
        "critical", "size", "name", "colour", "shout", "total", "ratio", "token",
    }
    assert names(ModelGrandChild.get_attributes()) == names(ModelChild.get_attributes())
    assert names(ModelBase.get_traces()) == {"log"}
    assert names(ModelChild.get_traces()) == {"log", "pcap"}
    assert names(ModelGrandChild.get_traces()) == {"log", "pcap"}


def test_a_subclass_declaration_does_not_change_its_parent() -> None:
    assert ModelBase.get_attribute("name").default == "base"
    assert ModelChild.get_attribute("name").default == "child"
    assert ModelGrandChild.get_attribute("name").default == "child"
    with pytest.raises(UnknownAttributeError):
        ModelBase.get_attribute("colour")
    assert "pcap" not in names(ModelBase.get_traces())
    # the inherited declaration is the parent's own object, not a changed copy
    assert ModelChild.get_attribute("size") is ModelBase.get_attribute("size")


@pytest.mark.parametrize(
    "rclass",
    list(dict.fromkeys([ResourceManager, *MODEL_TYPES, *ResourceFactory.resource_types().values()])),
    ids=lambda c: c.__name__,
)
def test_every_resource_type_has_critical_as_an_exec_readonly_bool_defaulting_to_true(
    rclass: type[ResourceManager],
) -> None:
    critical = rclass.get_attribute("critical")
    assert critical.type is Types.Bool
    assert critical.default is True
    assert critical.has_flag(Flags.ExecReadOnly)
    assert not critical.has_flag(Flags.ReadOnly)


def test_rtype_get_rtype_and_get_help_come_from_the_class() -> None:
    assert ModelBase.rtype() == "ResourceModel.Base"
    assert ModelChild.get_rtype() == "ResourceModel.Child"
    assert ModelGrandChild.rtype() == "ResourceModel.GrandChild"
    assert ModelBase.get_help() == "A base resource of the model tests"
    assert ModelChild.get_help() == "A child resource of the model tests"
    assert ModelGrandChild.get_help() == ModelChild.get_help()  # inherited


def test_attribute_declarations_keep_type_flags_default_allowed_and_range() -> None:
    colour = ModelChild.get_attribute("colour")
    assert colour.type is Types.Enumerate
    assert colour.allowed == ["red", "blue"]
    assert colour.default == "red"
    size = ModelBase.get_attribute("size")
    assert size.type is Types.Integer
    assert size.range == (0, None)
    assert ModelChild.get_attribute("token").is_credential
    assert ModelChild.get_attribute("token").flags == Flags.Credential
    assert ModelBase.get_attribute("name").flags == Flags.NoFlags


def test_clsinit_and_clsinit_copy_return_the_class_itself() -> None:
    class Local(ResourceManager):
        _rtype = "ResourceModel.Local"

    assert clsinit(Local) is Local
    assert clsinit_copy(Local) is Local
    assert names(Local.get_attributes()) == {"critical"}


# -- the factory -------------------------------------------------------------------------------


def test_the_factory_knows_registered_types_by_rtype() -> None:
    types = ResourceFactory.resource_types()
    assert types["ResourceModel.Base"] is ModelBase
    assert types["ResourceModel.Child"] is ModelChild
    assert types["Plain"].rtype() == "Plain"  # tests/rms.py
    assert ResourceFactory.get_resource_type("ResourceModel.GrandChild") is ModelGrandChild


def test_resource_types_returns_a_copy() -> None:
    types = ResourceFactory.resource_types()
    types.pop("ResourceModel.Base")
    assert "ResourceModel.Base" in ResourceFactory.resource_types()


def test_register_type_works_as_a_decorator_and_refuses_non_resource_managers() -> None:
    registry = ResourceRegistry()

    @registry.register_type
    class Decorated(ResourceManager):
        _rtype = "ResourceModel.Decorated"

    assert registry.resource_types() == {"ResourceModel.Decorated": Decorated}
    with pytest.raises(TypeError):
        registry.register_type(object)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        registry.register_type(Decorated())  # type: ignore[arg-type]


def test_an_unknown_rtype_is_refused_by_the_factory() -> None:
    with pytest.raises(UnknownResourceTypeError):
        ResourceFactory.get_resource_type("ResourceModel.Nothing")


def test_a_separate_registry_is_independent_of_the_default_factory() -> None:
    class Private(ResourceManager):
        _rtype = "ResourceModel.Private"

    registry = ResourceRegistry()
    assert registry.resource_types() == {}
    registry.register_type(Private)
    assert registry.get_resource_type("ResourceModel.Private") is Private
    assert "ResourceModel.Private" not in ResourceFactory.resource_types()
    with pytest.raises(UnknownResourceTypeError):
        ResourceFactory.get_resource_type("ResourceModel.Private")
    with pytest.raises(UnknownResourceTypeError):
        registry.get_resource_type("Plain")


def test_a_controller_with_its_own_registry_only_registers_its_types(redis_server: EmbeddedRedis) -> None:
    class Mine(ResourceManager):
        _rtype = "ResourceModel.Mine"

    registry = ResourceRegistry()
    registry.register_type(Mine)
    ec = ExperimentController(registry=registry, redis_url=redis_server.url, local_worker=False)
    try:
        with pytest.raises(UnknownResourceTypeError):
            ec.register_resource("Plain")
        g = ec.register_resource("ResourceModel.Mine")
        assert isinstance(ec.get_resource(g), Mine)
        assert ec.resources == [g]
    finally:
        # no worker serves this controller: release marks the RM RELEASED itself
        ec.release(timeout=0.1)
        ec.shutdown()


# -- attributes through the controller ----------------------------------------------------------


def test_get_attributes_of_a_guid_lists_its_types_declarations(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    attrs = ec.get_attributes(g)
    assert all(isinstance(a, Attribute) for a in attrs)
    assert names(attrs) == names(ModelChild.get_attributes())
    assert names(ec.get_attributes(ec.register_resource("ResourceModel.Base"))) == {"critical", "size", "name"}


def test_get_returns_declared_defaults_until_a_value_is_set(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    assert ec.get(g, "critical") is True
    assert ec.get(g, "size") == 1
    assert ec.get(g, "name") == "child"
    assert ec.get(g, "colour") == "red"
    assert ec.get(g, "ratio") == 0.5
    assert ec.get(g, "shout") is None
    rm = ec.get_resource(g)
    assert not rm.has_changed("size")


def test_set_then_get_round_trips_normalised_values(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    assert ec.set(g, "size", "7") == 7
    assert ec.get(g, "size") == 7
    assert ec.set(g, "critical", "false") is False
    assert ec.get(g, "critical") is False
    assert ec.set(g, "ratio", 2) == 2.0
    assert isinstance(ec.get(g, "ratio"), float)
    assert ec.set(g, "colour", "blue") == "blue"
    assert ec.get(g, "colour") == "blue"
    assert ec.set(g, "name", "n1") == "n1"
    assert ec.get(g, "name") == "n1"
    assert ec.get_resource(g).has_changed("size")


def test_a_set_hook_transforms_the_value_stored(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    assert ec.set(g, "shout", "hello") == "HELLO"
    assert ec.get(g, "shout") == "HELLO"


def test_a_set_hook_receives_the_previous_value(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    ec.set(g, "total", 2)
    ec.set(g, "total", 3)
    assert ec.get(g, "total") == 5


def test_values_are_per_guid(ec: ExperimentController) -> None:
    a = ec.register_resource("ResourceModel.Child")
    b = ec.register_resource("ResourceModel.Child")
    ec.set(a, "size", 3)
    assert ec.get(b, "size") == 1
    assert ec.get(a, "size") == 3


# -- conditions ---------------------------------------------------------------------------------------


Conditions = dict[int, list[tuple[set[int], int, Any]]]


def nepi_unregister_condition(conditions: Conditions, group: int | list[int], action: int | None = None) -> Conditions:
    """NEPI's ResourceManager.unregister_condition: every matching condition's group
    loses the guids of ``group``; a group left empty drops its condition, an action
    left without conditions drops out.  (NEPI tests ``if action``, which reads
    DEPLOY = 0 as "every action"; here DEPLOY limits it to DEPLOY like any action.)"""
    drop = {group} if isinstance(group, int) else set(group)
    result: Conditions = {}
    for act, conds in conditions.items():
        if action is not None and act != action:
            result[act] = conds
            continue
        kept = [(grp - drop, st, t) for grp, st, t in conds if grp - drop]
        if kept:
            result[act] = kept
    return result


def as_model(rm: ResourceManager) -> Conditions:
    return {int(a): [(set(g), int(s), t) for g, s, t in lst] for a, lst in rm.conditions.items()}


def test_register_condition_records_int_and_list_groups_on_the_rm(ec: ExperimentController) -> None:
    a, b, c, d = (ec.register_resource("Plain") for _ in range(4))
    ec.register_condition(a, ResourceAction.START, b, ResourceState.STARTED)
    ec.register_condition([a], ResourceAction.START, [c, d], ResourceState.READY, "1s")
    ec.register_condition(a, ResourceAction.STOP, [b, c], "FINISHED")
    ec.register_condition([a, b], ResourceAction.DEPLOY, d, ResourceState.PROVISIONED, "0.5s")

    assert ec.get_resource(a).conditions == {
        ResourceAction.START: [([b], ResourceState.STARTED, None), ([c, d], ResourceState.READY, "1s")],
        ResourceAction.STOP: [([b, c], ResourceState.FINISHED, None)],
        ResourceAction.DEPLOY: [([d], ResourceState.PROVISIONED, "0.5s")],
    }
    assert ec.get_resource(b).conditions == {ResourceAction.DEPLOY: [([d], ResourceState.PROVISIONED, "0.5s")]}
    assert ec.get_resource(c).conditions == {}
    states = [s for lst in ec.get_resource(a).conditions.values() for _, s, _ in lst]
    assert all(isinstance(s, ResourceState) for s in states)


def test_unregister_condition_matches_nepi_step_by_step(ec: ExperimentController) -> None:
    a, b, c, d, e = (ec.register_resource("Plain") for _ in range(5))
    ec.register_condition(a, ResourceAction.START, b, ResourceState.STARTED)
    ec.register_condition(a, ResourceAction.START, [c, d], ResourceState.READY, "1s")
    ec.register_condition(a, ResourceAction.STOP, [b, c], ResourceState.FINISHED)
    ec.register_condition(a, ResourceAction.DEPLOY, [d, e], ResourceState.READY)
    rm = ec.get_resource(a)
    model = as_model(rm)

    steps: list[tuple[int | list[int], int | None]] = [
        (c, None),  # c leaves every group; no group empties
        ([b], ResourceAction.STOP),  # STOP's only group empties: STOP is gone, START keeps b
        (e, ResourceAction.DEPLOY),  # DEPLOY (action 0) alone is touched
        (99, None),  # a guid in no group changes nothing
        ([b, d], ResourceAction.START),  # START's groups all empty: START is gone
        (d, None),  # the last group empties: no condition left
    ]
    for group, action in steps:
        rm.unregister_condition(group, action)
        model = nepi_unregister_condition(model, group, action)
        assert as_model(rm) == model, (group, action)

    assert model == {}
    assert rm.conditions == {}


def test_unregister_condition_with_an_action_leaves_the_other_actions_alone(ec: ExperimentController) -> None:
    a, b = ec.register_resource("Plain"), ec.register_resource("Plain")
    for action in ResourceAction:
        ec.register_condition(a, action, b, ResourceState.READY)
    rm = ec.get_resource(a)
    rm.unregister_condition(b, action=ResourceAction.DEPLOY)
    assert set(rm.conditions) == {ResourceAction.START, ResourceAction.STOP}
    rm.unregister_condition([b], action=ResourceAction.STOP)
    assert rm.conditions == {ResourceAction.START: [([b], ResourceState.READY, None)]}


def test_unregister_condition_removes_the_guid_but_keeps_the_rest_of_the_group(ec: ExperimentController) -> None:
    a, b, c = (ec.register_resource("Plain") for _ in range(3))
    ec.register_condition(a, ResourceAction.START, [b, c], ResourceState.STARTED, "2s")
    ec.get_resource(a).unregister_condition(b)
    assert ec.get_resource(a).conditions == {ResourceAction.START: [([c], ResourceState.STARTED, "2s")]}


# -- traces --------------------------------------------------------------------------------------------


def test_enable_trace_turns_a_declared_trace_on(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Child")
    assert ec.trace_enabled(g, "pcap") is False
    assert ec.trace_enabled(g, "log") is True  # declared enabled
    ec.enable_trace(g, "pcap")
    assert ec.trace_enabled(g, "pcap") is True
    other = ec.register_resource("ResourceModel.Child")
    assert ec.trace_enabled(other, "pcap") is False


def test_a_trace_of_a_child_type_is_unknown_to_its_parent_type(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Base")
    with pytest.raises(UnknownTraceError):
        ec.enable_trace(g, "pcap")
    assert ec.trace_enabled(g, "log") is True


# -- states and actions ---------------------------------------------------------------------------------


def test_resource_states_are_ordered_as_in_nepi() -> None:
    expected = ["NEW", "DISCOVERED", "PROVISIONED", "READY", "STARTED", "STOPPED", "FINISHED", "FAILED", "RELEASED"]
    assert [s.name for s in sorted(ResourceState)] == expected
    assert [int(s) for s in sorted(ResourceState)] == list(range(9))
    assert ResourceState.NEW < ResourceState.READY < ResourceState.STOPPED < ResourceState.FINISHED
    assert ResourceState.FINISHED < ResourceState.FAILED < ResourceState.RELEASED


def test_resource_state_2_str_names_every_state() -> None:
    assert ResourceState2str == {
        0: "NEW", 1: "DISCOVERED", 2: "PROVISIONED", 3: "READY", 4: "STARTED",
        5: "STOPPED", 6: "FINISHED", 7: "FAILED", 8: "RELEASED",
    }
    assert ResourceState2str[ResourceState.READY] == "READY"


def test_resource_actions_are_deploy_start_stop() -> None:
    assert [(a.name, int(a)) for a in ResourceAction] == [("DEPLOY", 0), ("START", 1), ("STOP", 2)]


def test_state_of_a_new_resource_is_new_in_both_forms(ec: ExperimentController) -> None:
    g = ec.register_resource("ResourceModel.Base")
    assert ec.state(g) == ResourceState.NEW
    assert ec.state(g, hr=True) == "NEW"


# -- the public API ----------------------------------------------------------------------------------------


PUBLIC = [
    "ExperimentController", "ECState", "FailureLevel", "ResourceManager", "ResourceState",
    "ResourceState2str", "ResourceAction", "ResourceFactory", "ResourceRegistry", "clsinit", "clsinit_copy",
    "failtrap", "Attribute", "Types", "Flags", "Trace", "TraceAttr", "TaskStatus",
]

ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(errors_module, inspect.isclass)
    if issubclass(obj, Exception) and obj.__module__ == errors_module.__name__
]


@pytest.mark.parametrize("name", PUBLIC)
def test_a_public_name_is_importable_from_nepi_dist(name: str) -> None:
    assert name in nepi_dist.__all__
    assert getattr(nepi_dist, name) is not None


def test_every_error_class_is_exported_and_derives_from_nepi_error() -> None:
    assert len(ERROR_CLASSES) >= 16
    for cls in ERROR_CLASSES:
        assert getattr(nepi_dist, cls.__name__) is cls
        assert cls.__name__ in nepi_dist.__all__
        assert issubclass(cls, NepiError)


def test_the_public_enums_keep_nepis_values() -> None:
    assert (nepi_dist.ECState.RUNNING, nepi_dist.ECState.FAILED, nepi_dist.ECState.TERMINATED) == (1, 2, 3)
    fl = nepi_dist.FailureLevel
    assert (fl.OK, fl.RM_FAILURE, fl.EC_FAILURE) == (1, 2, 3)
    ts = nepi_dist.TaskStatus
    assert (ts.NEW, ts.DONE, ts.ERROR) == (0, 1, 2)
    ta = nepi_dist.TraceAttr
    assert (ta.ALL, ta.STREAM, ta.PATH, ta.SIZE) == ("all", "stream", "path", "size")
    assert {t.name for t in Types} == {"String", "Bool", "Enumerate", "Double", "Integer"}
    assert {"NoFlags", "ReadOnly", "ExecReadOnly", "Credential", "Filter"} <= set(Flags.__members__)


def test_an_alias_finds_its_type_and_is_listed_apart_from_the_types() -> None:
    class Aliased(ResourceManager):
        _rtype = "ResourceModel.Aliased"
        _aliases = ("ResourceModelAliased",)

    class AliasedChild(Aliased):
        _rtype = "ResourceModel.AliasedChild"

    registry = ResourceRegistry(entry_points=False)
    registry.register_type(Aliased)
    registry.register_type(AliasedChild)
    assert registry.get_resource_type("ResourceModelAliased") is Aliased
    assert registry.canonical("ResourceModelAliased") == "ResourceModel.Aliased"
    assert list(registry.resource_types()) == ["ResourceModel.Aliased", "ResourceModel.AliasedChild"]
    assert registry.aliases() == {"ResourceModelAliased": "ResourceModel.Aliased"}
    assert AliasedChild.aliases() == ()


def test_an_alias_that_names_another_type_is_refused() -> None:
    class First(ResourceManager):
        _rtype = "ResourceModel.First"

    class Squatter(ResourceManager):
        _rtype = "ResourceModel.Squatter"
        _aliases = ("ResourceModel.First",)

    registry = ResourceRegistry(entry_points=False)
    registry.register_type(First)
    with pytest.raises(TypeError, match=r"already the type 'ResourceModel\.First'"):
        registry.register_type(Squatter)
    assert registry.resource_types() == {"ResourceModel.First": First}


def test_nepi_type_names_resolve_to_the_linux_types() -> None:
    from nepi_dist.resources.linux import LinuxApplication, LinuxNode, LinuxPing

    assert ResourceFactory.get_resource_type("LinuxNode") is LinuxNode
    assert ResourceFactory.get_resource_type("LinuxApplication") is LinuxApplication
    assert ResourceFactory.canonical("LinuxPing") == LinuxPing.rtype() == "linux::Ping"


def test_a_module_that_imports_the_base_class_does_not_register_it() -> None:
    import types

    module = types.ModuleType("with_base")
    module.ResourceManager = ResourceManager  # type: ignore[attr-defined]
    registry = ResourceRegistry(entry_points=False)
    registry.register_module(module)
    assert registry.resource_types() == {}
    assert "Resource" not in ResourceFactory.resource_types()
