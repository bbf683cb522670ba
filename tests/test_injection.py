"""Commands on hosts are quoted: no attribute value can run a second command.

Every String attribute of every registered Linux RM type (read from the
registry, not listed by hand), but those flagged :attr:`Flags.Command` (their
value is a program by design), is set in turn to a value that would run
``touch pwned`` if it were pasted into a shell unquoted: after ``;``, inside
``$(...)`` or backticks, after a newline, and after closing a single or a
double quote.  Each RM runs on its own node (on localhost, and over SSH for
the applications) with the attributes it needs to run, is deployed and run
through to its release; then no ``pwned`` file may exist anywhere the
commands could have run (an absolute path, and the relative name searched
for under HOME and the worker's folder).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.errors import AttributeValueError, WaitTimeoutError
from nepi_dist.model.attribute import Flags, Types
from nepi_dist.model.resource import ResourceFactory, ResourceManager
from nepi_dist.resources.linux.application import LinuxApplication
from nepi_dist.resources.linux.channel import LinuxChannel
from nepi_dist.resources.linux.netdev import LiveLink
from nepi_dist.resources.linux.node import LinuxNode
from nepi_dist.resources.linux.tunnel import LinuxTunnel

from .conftest import ROOT, SSHServer
from .testbed import Testbed, _used_third_octets

#: What a tool needs to run briefly, unless it is the attribute under test.
BASE = {
    "linux::Application": {"command": "true"},
    "linux::Ping": {"target": "127.0.0.1", "count": 1},
    "linux::Traceroute": {"target": "127.0.0.1", "maxHops": 1, "queries": 1, "waitTime": 0.5},
    "linux::Tcpdump": {"interface": "lo", "count": 1},
    "linux::UdpTest": {"target": "127.0.0.1", "port": 9, "duration": 1},
}


def payloads(marker: Path) -> list[str]:
    return [
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"x\ntouch {marker}\n",
        f"x' ; touch {marker} ; '",
        f'x" ; touch {marker} ; "',
        f"$(touch${{IFS}}{marker})=x",
        "; touch pwned",
        "$(touch pwned)",
    ]


def all_linux_types() -> dict[str, type[ResourceManager]]:
    """Every registered Linux RM type, entry points included."""
    ResourceFactory.load_entry_points()
    return {name: cls for name, cls in ResourceFactory.resource_types().items()
            if cls.__module__.startswith("nepi_dist.resources.linux")}


def is_network(cls: type[ResourceManager]) -> bool:
    """A type that makes network devices: tried on a testbed host (a network namespace), not here."""
    return issubclass(cls, (LiveLink, LinuxTunnel, LinuxChannel))


def linux_types() -> dict[str, type[ResourceManager]]:
    """The Linux RM types tried on localhost and over SSH: nodes and applications."""
    return {name: cls for name, cls in all_linux_types().items() if not is_network(cls)}


def string_attributes(cls: type[ResourceManager], skip: set[str] | None = None) -> list[str]:
    return sorted(a.name for a in cls.get_attributes()
                  if a.type is Types.String and not a.has_flag(Flags.Command) and not a.has_flag(Flags.ReadOnly)
                  and a.name not in (skip or set()))


def test_every_linux_type_and_its_string_attributes_are_covered() -> None:
    types = linux_types()
    assert {"linux::Node", "linux::Application", "linux::Ping", "linux::Traceroute", "linux::Tcpdump",
            "linux::UdpTest"} <= set(types)
    network = {n for n, c in all_linux_types().items() if is_network(c)}
    assert {"linux::Interface", "linux::Tap", "linux::Tun", "linux::UdpTunnel", "linux::GRETunnel",
            "linux::Channel"} <= network
    assert set(types) | network == set(all_linux_types())
    assert "command" not in string_attributes(types["linux::Application"])
    assert {"env", "depends", "sources", "stdin", "code"} <= set(string_attributes(types["linux::Application"]))
    assert {"hostname", "username", "identity", "worker"} <= set(string_attributes(types["linux::Node"]))


def _node(ec: ExperimentController, where: str, sshd: SSHServer | None, **attrs: object) -> int:
    node = ec.register_resource("linux::Node")
    ec.set(node, "critical", False)
    ec.set(node, "workerWait", 0.5)
    ec.set(node, "connectTimeout", 2.0)
    if where == "ssh":
        assert sshd is not None
        for name, value in dict(hostname="127.0.0.1", port=sshd.port, username=sshd.username,
                                identity=sshd.identity, serverKey=sshd.server_key).items():
            ec.set(node, name, value)
    for name, value in attrs.items():
        ec.set(node, name, value)
    return node


def _set(ec: ExperimentController, guid: int, name: str, value: object) -> bool:
    """Set an attribute; False when the value is refused up front (nothing written: also safe)."""
    try:
        ec.set(guid, name, value)
    except AttributeValueError:
        return False
    return True


def _found(marker: Path, home: Path) -> list[str]:
    hits = [str(marker)] if marker.exists() else []
    for root in {home, ROOT, Path.cwd()}:
        for dirpath, _dirs, files in os.walk(root):
            hits.extend(os.path.join(dirpath, f) for f in files if f == "pwned")
    return hits


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_no_string_attribute_of_a_linux_rm_runs_a_second_command(
        where: str, request: pytest.FixtureRequest, tmp_path: Path, _temporary_home: Path) -> None:
    sshd: SSHServer | None = request.getfixturevalue("sshd") if where == "ssh" else None
    marker = tmp_path / "pwned"
    types = linux_types()
    ec = ExperimentController(nthreads=20)
    tried: list[tuple[str, str, int]] = []
    try:
        for value in payloads(marker):
            for rtype, cls in sorted(types.items()):
                if issubclass(cls, LinuxNode):
                    if where == "ssh":
                        continue  # a node's own attributes: tried on the localhost node
                    for name in string_attributes(cls):
                        node = _node(ec, where, sshd)
                        if not _set(ec, node, name, value):
                            continue
                        app = ec.register_resource("linux::Application")
                        ec.set(app, "command", "true")
                        ec.set(app, "critical", False)
                        ec.register_connection(app, node)
                        tried.append((rtype, name, app))
                    continue
                for name in string_attributes(cls):
                    node = _node(ec, where, sshd)
                    rm = ec.register_resource(rtype)
                    ec.set(rm, "critical", False)
                    for base, base_value in BASE.get(rtype, {}).items():
                        if base != name:
                            ec.set(rm, base, base_value)
                    if not _set(ec, rm, name, value):
                        continue
                    ec.register_connection(rm, node)
                    tried.append((rtype, name, rm))
        assert len(tried) > 8 * 40
        for _rtype, _name, guid in tried:  # one group each: a failure holds back no other RM
            ec.deploy([guid, *ec.get_resource(guid).connections])
        with contextlib.suppress(WaitTimeoutError):  # one still running is stopped by the release below
            ec.wait_finished([g for _, _, g in tried], timeout=90)
        reached = [(t, n) for t, n, g in tried if ec.state(g) >= ResourceState.READY]
        assert reached, "the values reached no host at all"
    finally:
        ec.shutdown()
    assert all(ec.state(g) == ResourceState.RELEASED for _, _, g in tried)
    assert _found(marker, _temporary_home) == []


# -- network types, on a testbed of two hosts (network namespaces) ---------------------


@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    bed = Testbed(hosts=2).up()
    try:
        yield bed
    finally:
        bed.close()
    assert bed.leftovers() == [], f"the testbed left {bed.leftovers()}"


def test_no_string_attribute_of_a_network_rm_runs_a_second_command(testbed: Testbed, tmp_path: Path,
                                                                   _temporary_home: Path) -> None:
    """Interfaces, taps, tuns and the tunnels joining them, on the hosts' own network namespaces.

    Each attribute a network type adds to a LinuxApplication (whose own are tried above) gets
    each payload; a tap's or a tun's is tried on an end of a GRE or a UDP tunnel, so that the
    tunnel's commands read it too.
    """
    marker = tmp_path / "pwned"
    octet = random.choice(sorted(set(range(100, 250)) - _used_third_octets()))
    count = iter(range(1, 60000))
    types = all_linux_types()
    app_attributes = {a.name for a in LinuxApplication.get_attributes()}
    tried: list[tuple[str, str, list[int]]] = []

    def address() -> str:
        n = next(count)
        return f"10.{octet}.{n // 250}.{n % 250 + 1}"

    def make(ec: ExperimentController, rtype: str, *connect: int, **attrs: object) -> int:
        guid = ec.register_resource(rtype)
        ec.set(guid, "critical", False)
        for name, value in attrs.items():
            ec.set(guid, name, value)
        for other in connect:
            ec.register_connection(guid, other)
        return guid

    def node(ec: ExperimentController, k: int) -> int:
        return make(ec, "LinuxNode", worker=testbed.host(k))

    ec = ExperimentController(redis_url=testbed.url, local_worker=True)
    try:
        for value in payloads(marker)[:4]:
            for rtype in ("linux::Interface", "linux::Tap", "linux::Tun"):
                for name in string_attributes(types[rtype], skip=app_attributes):
                    n1, n2 = node(ec, 1), node(ec, 2)
                    if rtype == "linux::Interface":
                        rm = make(ec, rtype, n1, ip4=testbed.address(1))  # found by its address
                        group = [n1, rm]
                    else:
                        rm = make(ec, rtype, n1, ip4=address(), prefix4=16)
                        other = make(ec, rtype, n2, ip4=address(), prefix4=16)
                        gre = rtype == "linux::Tap" and name.startswith("gre")  # what only GRE reads
                        tunnel = "linux::GRETunnel" if gre else "linux::UdpTunnel"
                        group = [n1, n2, rm, other, make(ec, tunnel, rm, other)]
                    try:
                        ec.set(rm, name, value)
                    except AttributeValueError:
                        continue  # refused up front: nothing written
                    tried.append((rtype, name, group))
        assert len(tried) >= 4
        for _rtype, _name, group in tried:
            ec.deploy(group)
        every = [g for _, _, group in tried for g in group[-3:]]
        with contextlib.suppress(WaitTimeoutError):
            ec.wait_started(every, timeout=90)
        reached = [t for t, _, group in tried if ec.state(group[2 if len(group) > 2 else 1]) != ResourceState.NEW]
        assert len(reached) == len(tried), "every value reached its host"
    finally:
        ec.shutdown()
    assert _found(marker, _temporary_home) == []
