"""NEPI's deploy-order scenario: 2 applications, 2 nodes, 2 interfaces, 1 channel."""

from __future__ import annotations

from nepi_dist import ExperimentController, ResourceFactory, ResourceManager, ResourceState, clsinit_copy

from .rms import Plain


@clsinit_copy
class StepwiseDeploy(ResourceManager):
    """Replaces one deploy step: it records the state it ran in (field ``seen``)."""

    _rtype = "StepwiseDeploy"

    def do_provision(self) -> None:
        self.ec.store.set_fields(self.guid, {"seen": str(int(self.state))})
        super().do_provision()


ResourceFactory.register_type(StepwiseDeploy)


def build_graph(ec: ExperimentController) -> dict[str, int]:
    g = {
        "node1": ec.register_resource("Node"),
        "node2": ec.register_resource("Node"),
        "iface1": ec.register_resource("Interface"),
        "iface2": ec.register_resource("Interface"),
        "chan": ec.register_resource("Channel"),
        "app1": ec.register_resource("Application"),
        "app2": ec.register_resource("Application"),
    }
    ec.register_connection(g["app1"], g["node1"])
    ec.register_connection(g["app2"], g["node2"])
    ec.register_connection(g["iface1"], g["node1"])
    ec.register_connection(g["iface2"], g["node2"])
    ec.register_connection(g["iface1"], g["chan"])
    ec.register_connection(g["iface2"], g["chan"])
    return g


def check_order(ec: ExperimentController, g: dict[str, int]) -> None:
    rm = {name: ec.get_resource(guid) for name, guid in g.items()}
    for i in ("1", "2"):
        node, iface, app = rm["node" + i], rm["iface" + i], rm["app" + i]
        assert node.ready_time > iface.ready_time, "node ready after its interface"
        assert iface.ready_time > node.provision_time, "interface ready after node provisioned"
        assert iface.ready_time > rm["chan"].ready_time, "interface ready after the channel"
        assert app.ready_time > node.ready_time, "application ready after its node"
        assert app.start_time >= max(r.ready_time for r in rm.values()), "group started when all READY"


def test_resources_deploy_in_dependency_order(ec: ExperimentController) -> None:
    g = build_graph(ec)
    ec.deploy()
    ec.wait_finished([g["app1"], g["app2"]], timeout=60)
    assert ec.state(g["app1"]) == ResourceState.FINISHED
    assert ec.state(g["app2"]) == ResourceState.FINISHED
    check_order(ec, g)
    ec.shutdown()
    check_order(ec, g)  # from the final snapshot


def states_announced(ec: ExperimentController, guid: int) -> list[int]:
    """The states the run's event stream announced for ``guid``, in order."""
    return [int(f["s"]) for _, f in ec.store.events("0-0", 0) if f["g"] == str(guid)]


def test_a_default_deploy_goes_through_discovered_and_provisioned_to_ready_in_one_step(
    ec: ExperimentController,
) -> None:
    guid = ec.register_resource(Plain.get_rtype())
    ec.set(guid, "runtime", 30.0)
    ec.deploy([guid])
    ec.wait_started([guid], timeout=10)
    rm = ec.get_resource(guid)
    assert rm.discover_time is not None
    assert rm.discover_time == rm.provision_time == rm.ready_time, "one atomic step, one timestamp"
    assert states_announced(ec, guid)[:4] == [
        ResourceState.DISCOVERED, ResourceState.PROVISIONED, ResourceState.READY, ResourceState.STARTED,
    ]


def test_a_class_replacing_a_deploy_step_runs_each_step_in_order(ec: ExperimentController) -> None:
    guid = ec.register_resource(StepwiseDeploy.get_rtype())
    ec.deploy([guid])
    ec.wait_started([guid], timeout=10)
    rm = ec.get_resource(guid)
    assert ec.store.rm_field(guid, "seen") == str(int(ResourceState.DISCOVERED))
    assert rm.discover_time is not None and rm.provision_time is not None and rm.ready_time is not None
    assert rm.discover_time < rm.provision_time < rm.ready_time
    assert states_announced(ec, guid)[:4] == [
        ResourceState.DISCOVERED, ResourceState.PROVISIONED, ResourceState.READY, ResourceState.STARTED,
    ]
