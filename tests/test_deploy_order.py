"""NEPI's deploy-order scenario: 2 applications, 2 nodes, 2 interfaces, 1 channel."""

from __future__ import annotations

from nepi_dist import ExperimentController, ResourceState


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
