"""NEPI's names on nepi_dist: import paths, type names, attribute names and meanings, host rules.

Every NEPI rtype alias and every attribute NEPI declared on the Linux types
resolves; each attribute's effect is checked on the command line it builds,
and a representative set by running the real tool on localhost.  The host
rules (localhost by name; ``depends`` installing only what is missing, one
package-manager run per host) run real apt-get on a real local .deb.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nepi_dist
from nepi_dist import (
    AttributeValueError,
    ExperimentController,
    ResourceAction,
    ResourceFactory,
    ResourceState,
    TraceAttr,
    UnknownAttributeError,
    UnsupportedAttributeError,
)
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.resources.linux.node import PACKAGE_LOCK

from .conftest import SSHServer, start_worker_process, stop_process, wait_for_workers

ROOT = Path(__file__).resolve().parent.parent

# -- NEPI's declarations, written down from its sources (names only) -------------------------------

NEPI_TYPES = {
    "LinuxNode": "linux::Node",
    "LinuxApplication": "linux::Application",
    "LinuxPing": "linux::Ping",
    "LinuxTraceroute": "linux::Traceroute",
    "LinuxTcpdump": "linux::Tcpdump",
    "LinuxUdpTest": "linux::UdpTest",
    "Collector": "Collector",
}

NEPI_ATTRIBUTES = {
    "LinuxNode": "hostname username port home identity serverKey cleanHome cleanExperiment cleanProcesses "
                 "cleanProcessesAfter tearDown gatewayUser gateway ip critical",
    "LinuxApplication": "command forwardX11 env sudo depends sources code files bins libs build install stdin "
                        "tearDown critical",
    "LinuxPing": "count mark interval address preload numeric pattern printTimestamp tos quiet recordRoute "
                 "routeBypass packetSize sendBuff ttl timestamp hint fullLatency verbose flood deadline timeout "
                 "target earlyStart",
    "LinuxTraceroute": "continuous printTimestamp useIP target",
    "LinuxTcpdump": "A b B c C d dd ddd D e F G i I j K l U n N S s T t tt ttt tttt ttttt v vv vvv w expression",
    "LinuxUdpTest": "s p a A b B c d e g target i l m o P q r t T continuous printTimestamp",
    "Collector": "traceName subDir rename",
}

#: Our names that stay, as aliases of NEPI's: (type, ours, NEPI's).
RENAMED = [
    ("LinuxTcpdump", "interface", "i"),
    ("LinuxTcpdump", "count", "c"),
    ("LinuxTcpdump", "snaplen", "s"),
    ("LinuxTcpdump", "numeric", "n"),
    ("LinuxTcpdump", "pcapFile", "w"),
    ("LinuxTcpdump", "filter", "expression"),
    ("LinuxUdpTest", "server", "s"),
    ("LinuxUdpTest", "port", "p"),
    ("LinuxUdpTest", "duration", "t"),
]


def command_of(ec: ExperimentController, rtype: str, **attrs: object) -> str:
    """The command line a tool of ``rtype`` builds from ``attrs`` (nothing deployed)."""
    guid = ec.register_resource(rtype)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    rm = ec.get_resource(guid)
    return rm.build_command()  # type: ignore[attr-defined]


# -- import paths -----------------------------------------------------------------------------------


NEPI_MODULES = {
    "nepi.execution.ec": ["ExperimentController", "ECState", "FailureLevel"],
    "nepi.execution.resource": ["ResourceManager", "ResourceState", "ResourceAction", "ResourceFactory",
                                "ResourceState2str", "clsinit", "clsinit_copy", "failtrap", "reschedule_delay"],
    "nepi.execution.attribute": ["Attribute", "Flags", "Types"],
    "nepi.execution.trace": ["Trace", "TraceAttr"],
    "nepi.execution.scheduler": ["TaskStatus"],
    "nepi.util.timefuncs": ["tnow", "tdiff", "tdiffsec", "stabsformat", "stformat", "tsformat"],
    "nepi.resources.linux.node": ["LinuxNode"],
    "nepi.resources.linux.application": ["LinuxApplication"],
    "nepi.resources.linux.ping": ["LinuxPing"],
    "nepi.resources.linux.traceroute": ["LinuxTraceroute"],
    "nepi.resources.linux.tcpdump": ["LinuxTcpdump"],
    "nepi.resources.linux.udptest": ["LinuxUdpTest"],
    "nepi.resources.all.collector": ["Collector"],
}


@pytest.mark.parametrize("module", sorted(NEPI_MODULES))
def test_each_nepi_module_re_exports_nepi_dists_own_objects(module: str) -> None:
    mod = importlib.import_module(module)
    for name in NEPI_MODULES[module]:
        obj = getattr(mod, name)
        home = getattr(obj, "__module__", None) if callable(obj) else None
        assert home is None or home.startswith("nepi_dist."), f"{module}.{name} is not nepi_dist's"
    assert importlib.import_module("nepi.execution.ec").ExperimentController is nepi_dist.ExperimentController
    assert importlib.import_module("nepi.execution.resource").ResourceFactory is nepi_dist.ResourceFactory


def test_the_nepi_package_defines_nothing_of_its_own() -> None:
    for path in (ROOT / "nepi").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(def|class) ", text, re.M), f"{path} defines code; it may only re-export"


def test_nepi_timefuncs_measure_and_parse_dates_as_nepi_did() -> None:
    from nepi.util.timefuncs import stabsformat, stformat, tdiffsec, tnow, tsformat

    start = tnow()
    later = stabsformat("2s", start)
    assert tdiffsec(later, start) == pytest.approx(2.0)
    assert stformat(tsformat(start)) == start
    assert stabsformat(tsformat(start)) == start


# -- type names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("nepi_name", sorted(NEPI_TYPES))
def test_each_nepi_type_name_resolves_to_our_type_and_registers_under_it(
    nepi_name: str, ec: ExperimentController
) -> None:
    assert ResourceFactory.canonical(nepi_name) == NEPI_TYPES[nepi_name]
    guid = ec.register_resource(nepi_name)
    assert ec.get_resource(guid).rtype() == NEPI_TYPES[nepi_name]


def test_resource_types_lists_each_type_once_with_its_nepi_alias_findable() -> None:
    types = ResourceFactory.resource_types()
    aliases = ResourceFactory.aliases()
    for nepi_name, ours in NEPI_TYPES.items():
        assert ours in types
        if nepi_name != ours:
            assert nepi_name not in types
            assert aliases[nepi_name] == ours


# -- attribute names --------------------------------------------------------------------------------


@pytest.mark.parametrize("nepi_type", sorted(NEPI_ATTRIBUTES))
def test_every_attribute_nepi_declared_is_declared_under_its_nepi_name(nepi_type: str) -> None:
    rclass = ResourceFactory.get_resource_type(nepi_type)
    for name in NEPI_ATTRIBUTES[nepi_type].split():
        assert rclass.get_attribute(name).name == name, f"{nepi_type}.{name} is only an alias"


@pytest.mark.parametrize(("nepi_type", "ours", "theirs"), RENAMED)
def test_our_clearer_name_is_an_alias_of_nepis_one_attribute_stored_once(
    nepi_type: str, ours: str, theirs: str, ec: ExperimentController
) -> None:
    rclass = ResourceFactory.get_resource_type(nepi_type)
    attr = rclass.get_attribute(theirs)
    assert rclass.get_attribute(ours) is attr
    assert sum(a is attr for a in rclass.get_attributes()) == 1
    guid = ec.register_resource(nepi_type)
    value = {"Integer": 7, "Bool": True}.get(attr.type.name, "lo")
    ec.set(guid, ours, value)
    assert ec.get(guid, theirs) == ec.get(guid, ours) == attr.validate(value)
    fields = ec.store.rm_all(guid)
    assert f"a:{theirs}" in fields and f"a:{ours}" not in fields


def test_an_unknown_name_is_still_an_unknown_attribute(ec: ExperimentController) -> None:
    guid = ec.register_resource("LinuxPing")
    with pytest.raises(UnknownAttributeError):
        ec.set(guid, "colour", "red")


# -- attribute effects: the command line ------------------------------------------------------------


PING_FLAGS = [
    ("count", 3, "-c 3"), ("mark", 5, "-m 5"), ("interval", 0.5, "-i 0.5"), ("address", "lo", "-I lo"),
    ("preload", 2, "-l 2"), ("numeric", True, "-n"), ("pattern", "ff", "-p ff"), ("tos", 16, "-Q 16"),
    ("quiet", True, "-q"), ("recordRoute", True, "-R"), ("routeBypass", True, "-r"),
    ("packetSize", 100, "-s 100"), ("sendBuff", 4, "-S 4"), ("ttl", 9, "-t 9"), ("timestamp", "tsonly", "-T tsonly"),
    ("hint", "do", "-M do"), ("fullLatency", True, "-U"), ("verbose", True, "-v"), ("flood", True, "-f"),
    ("deadline", 4, "-w 4"), ("timeout", 2, "-W 2"), ("timeout", 0.5, "-W 0.5"),
]


@pytest.mark.parametrize(("name", "value", "flag"), PING_FLAGS)
def test_each_ping_option_puts_its_flag_before_the_target(
    name: str, value: object, flag: str, ec: ExperimentController
) -> None:
    command = command_of(ec, "LinuxPing", target="127.0.0.1", **{name: value})
    assert command == f"ping {flag} 127.0.0.1"


def test_ping_with_no_option_set_is_plain_ping_of_the_target(ec: ExperimentController) -> None:
    assert command_of(ec, "LinuxPing", target="10.0.0.1") == "ping 10.0.0.1"


def test_ping_options_come_in_nepis_order_and_print_timestamp_prints_the_date_first(
    ec: ExperimentController,
) -> None:
    command = command_of(ec, "LinuxPing", target="h", timeout=1, count=2, printTimestamp=True, numeric=True)
    assert command == "date +%Y%m%d%H%M%S; ping -c 2 -n -W 1 h"


TCPDUMP_BOOLS = "A b d dd ddd D e I K l U n N S t tt ttt tttt ttttt v vv vvv".split()  # noqa: SIM905
TCPDUMP_VALUES = [("B", 64), ("c", 5), ("C", 1), ("F", "filter.txt"), ("G", 30), ("i", "lo"),
                  ("j", "host"), ("s", 96), ("T", "rtp"), ("w", "out.pcap")]


@pytest.mark.parametrize("letter", TCPDUMP_BOOLS)
def test_each_tcpdump_flag_letter_is_its_tcpdump_flag(letter: str, ec: ExperimentController) -> None:
    assert command_of(ec, "LinuxTcpdump", **{letter: True}) == f"exec tcpdump -{letter}"


@pytest.mark.parametrize(("letter", "value"), TCPDUMP_VALUES)
def test_each_tcpdump_valued_letter_passes_its_value(letter: str, value: object, ec: ExperimentController) -> None:
    assert command_of(ec, "LinuxTcpdump", **{letter: value}) == f"exec tcpdump -{letter} {value}"


def test_tcpdump_w_true_writes_the_pcap_file_and_the_expression_comes_last_quoted(ec: ExperimentController) -> None:
    command = command_of(ec, "LinuxTcpdump", w=True, i="lo", expression="icmp or udp port 53")
    assert command == "exec tcpdump -i lo -w pcap 'icmp or udp port 53'"


def test_tcpdump_without_w_prints_to_stdout_as_nepis_did(ec: ExperimentController) -> None:
    assert "-w" not in command_of(ec, "LinuxTcpdump", i="lo", n=True)


TRACEROUTE = [
    (dict(target="h"), "traceroute h"),
    (dict(target="h", printTimestamp=True), "date +%Y%m%d%H%M%S; traceroute h"),
    (dict(target="h", continuous=True), "while true; do traceroute h; sleep 2; done"),
    (dict(target="localhost", useIP=True), "traceroute 127.0.0.1"),
    (dict(target="h", maxHops=3, numeric=True), "traceroute -m 3 -n h"),
]


@pytest.mark.parametrize(("attrs", "command"), TRACEROUTE)
def test_traceroute_builds_nepis_command(attrs: dict[str, object], command: str, ec: ExperimentController) -> None:
    assert command_of(ec, "LinuxTraceroute", **attrs) == command


UDPTEST = [
    (dict(s=True, p=5001), "iperf3 -s -p 5001"),
    (dict(s=True, oneOff=True, udp=True, t=3), "iperf3 -s -1"),  # client-only options stay out of a server
    (dict(target="h"), "iperf3 -c h -u"),
    (dict(target="h", p=5001, b=65536, i=True, l=1200, m=100000, o="log", q="3", t=2, T=10),
     "iperf3 -p 5001 -c h -u -w 65536 --bidir -l 1200 -n 100000 --logfile log -S 0x28 -t 2 -b 10M"),
    (dict(target="h", r=3), "for _ in $(seq 3); do iperf3 -c h -u || exit $?; done"),
    (dict(target="h", udp=False, continuous=True, printTimestamp=True),
     "while true; do date +%Y%m%d%H%M%S; iperf3 -c h; done"),
]


@pytest.mark.parametrize(("attrs", "command"), UDPTEST)
def test_udptest_maps_nepis_options_to_iperf3(attrs: dict[str, object], command: str, ec: ExperimentController) -> None:
    assert command_of(ec, "LinuxUdpTest", **attrs) == command


@pytest.mark.parametrize("q", ["1", "2", "3", "4", "5", "6"])
def test_udptest_q_classes_become_tos_bytes(q: str, ec: ExperimentController) -> None:
    expected = {"1": "0x10", "2": "0x08", "3": "0x28", "4": "0x38", "5": "0x88", "6": "0x98"}[q]
    assert command_of(ec, "LinuxUdpTest", target="h", q=int(q)).endswith(f"-S {expected}")


UNSUPPORTED = [("LinuxUdpTest", n, v) for n, v in
               [("a", True), ("A", 64), ("B", 1024), ("c", True), ("d", 512), ("e", True), ("g", True), ("P", True)]]
UNSUPPORTED.append(("LinuxApplication", "forwardX11", True))


@pytest.mark.parametrize(("rtype", "name", "value"), UNSUPPORTED)
def test_a_nepi_attribute_that_cannot_work_here_refuses_a_value_naming_itself_and_writes_nothing(
    rtype: str, name: str, value: object, ec: ExperimentController
) -> None:
    guid = ec.register_resource(rtype)
    before = ec.store.rm_all(guid)
    with pytest.raises(UnsupportedAttributeError, match=rf"'{name}'"):
        ec.set(guid, name, value)
    assert ec.store.rm_all(guid) == before
    ec.set(guid, name, False if isinstance(value, bool) else None)  # the harmless value is accepted


def test_a_bad_package_name_in_depends_is_refused_before_anything_runs(ec: ExperimentController) -> None:
    guid = ec.register_resource("LinuxApplication")
    with pytest.raises(AttributeValueError, match="package name"):
        ec.set(guid, "depends", "bash; rm -rf /")


# -- attribute effects: the real tools on localhost --------------------------------------------------


def on_localhost(ec: ExperimentController, rtype: str, **attrs: object) -> int:
    node = ec.register_resource("LinuxNode")
    guid = ec.register_resource(rtype)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    ec.register_connection(guid, node)
    return guid


def test_real_ping_honours_count_interval_size_ttl_numeric_and_the_date_line(ec: ExperimentController) -> None:
    p = on_localhost(ec, "LinuxPing", target="127.0.0.1", count=2, interval=0.2, packetSize=100, ttl=7,
                     numeric=True, printTimestamp=True, deadline=5)
    q = on_localhost(ec, "LinuxPing", target="127.0.0.1", count=2, interval=0.2, quiet=True)
    ec.deploy()
    ec.wait_finished([p, q], timeout=60)
    out = ec.trace(p, "stdout")
    lines = out.splitlines()
    assert re.fullmatch(r"\d{14}", lines[0]), "printTimestamp: the date comes first"
    assert sum("108 bytes from 127.0.0.1" in line and "ttl=" in line for line in lines) == 2  # 100 + 8 header
    assert "2 packets transmitted, 2 received" in out
    quiet = ec.trace(q, "stdout")
    assert "bytes from" not in quiet and "2 packets transmitted" in quiet


def test_real_ping_with_early_start_runs_before_its_start_condition_is_met(ec: ExperimentController) -> None:
    slow = on_localhost(ec, "LinuxApplication", command="sleep 2")
    early = on_localhost(ec, "LinuxPing", target="127.0.0.1", count=1, earlyStart=True)
    late = on_localhost(ec, "LinuxPing", target="127.0.0.1", count=1)
    for p in (early, late):
        ec.register_condition(p, ResourceAction.START, slow, ResourceState.FINISHED)
    ec.deploy()
    ec.wait_finished([slow, early, late], timeout=60)
    slow_end = ec.get_resource(slow).finish_time
    assert ec.get_resource(early).start_time < slow_end <= ec.get_resource(late).start_time
    assert "1 received" in ec.trace(early, "stdout")


def test_real_tcpdump_writes_its_w_file_with_the_snaplen_s_into_the_pcap_trace(ec: ExperimentController) -> None:
    dump = on_localhost(ec, "LinuxTcpdump", i="lo", c=2, n=True, s=96, w="capture.pcap", expression="icmp")
    ping = on_localhost(ec, "LinuxPing", target="127.0.0.1", count=3, interval=0.2)
    ec.register_condition(ping, ResourceAction.START, dump, ResourceState.STARTED, "1s")
    ec.deploy()
    ec.wait_finished([dump, ping], timeout=60)
    assert ec.state(dump) == ResourceState.FINISHED, ec.trace(dump, "stderr")
    data = ec.trace(dump, "pcap")
    assert data == ec.trace(dump, "capture.pcap")
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # a little-endian pcap
    assert int.from_bytes(data[16:20], "little") == 96  # the snaplen -s set
    assert ec.trace(dump, "pcap", TraceAttr.PATH).endswith("/capture.pcap")


def test_real_traceroute_continuous_runs_again_until_stopped_each_run_dated(ec: ExperimentController) -> None:
    tr = on_localhost(ec, "LinuxTraceroute", target="localhost", useIP=True, continuous=True,
                      printTimestamp=True, maxHops=2)
    ec.deploy()
    ec.wait_started(tr, timeout=60)
    time.sleep(3.0)
    ec.stop(tr)
    ec.wait_finished(tr, timeout=30)
    out = ec.trace(tr, "stdout")
    assert len(re.findall(r"^\d{14}$", out, re.M)) >= 2
    assert out.count("traceroute to 127.0.0.1") >= 2


def test_real_udptest_server_listens_from_deploy_and_a_client_measures_udp(ec: ExperimentController) -> None:
    from nepi_dist.engine.embedded import free_port

    port = free_port()
    server = on_localhost(ec, "LinuxUdpTest", s=True, p=port, oneOff=True)
    client = on_localhost(ec, "LinuxUdpTest", target="127.0.0.1", p=port, t=1, T=2, l=1000, json=True)
    ec.deploy()  # no condition: the server already listens when the client starts (NEPI's order)
    ec.wait_finished([server, client], timeout=60)
    assert ec.state(client) == ResourceState.FINISHED, ec.trace(client, "stderr")
    report = json.loads(ec.trace(client, "stdout"))
    assert report["start"]["test_start"]["protocol"] == "UDP"
    assert report["start"]["test_start"]["blksize"] == 1000
    assert report["start"]["target_bitrate"] == 2_000_000
    assert ec.get_resource(server).start_time <= ec.get_resource(client).start_time


def test_a_udptest_server_is_ready_only_once_it_listens_on_its_port(ec: ExperimentController) -> None:
    from nepi_dist.engine.embedded import free_port

    port = free_port()
    server = on_localhost(ec, "LinuxUdpTest", s=True, p=port, oneOff=True)
    ec.deploy()
    ec.wait(server, ResourceState.READY, timeout=60)
    # At once, no retry: a client that READY lets start finds the server listening.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    ec.wait_finished(server, timeout=60)  # its one client came (our probe) and went


def test_stdin_naming_a_local_file_feeds_that_files_content(ec: ExperimentController, tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("line one\nline two\n")
    a = on_localhost(ec, "LinuxApplication", command="wc -l", stdin=str(source))
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    assert ec.trace(a, "stdout").strip() == "2"


# -- host rules: localhost by name ------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_a_loopback_node_with_a_username_runs_locally_not_over_ssh(
    hostname: str, ec: ExperimentController
) -> None:
    node = ec.register_resource("LinuxNode")
    ec.set(node, "hostname", hostname)
    ec.set(node, "username", "nobody-of-nepi")  # no such account: over SSH this could never log in
    ec.set(node, "identity", "/nonexistent/key")
    a = ec.register_resource("LinuxApplication")
    ec.set(a, "command", "echo $$ > /dev/null; id -u")
    ec.register_connection(a, node)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    assert ec.state(a) == ResourceState.FINISHED, ec.get_resource(a).error_message
    assert ec.trace(a, "stdout").strip() == str(os.getuid())
    assert ec.get(node, "ip") in ("127.0.0.1", "::1")


def test_node_home_relative_to_home_holds_the_experiment_folders(ec: ExperimentController) -> None:
    node = ec.register_resource("LinuxNode")
    ec.set(node, "home", "nepi-home-test")
    a = ec.register_resource("LinuxApplication")
    ec.set(a, "command", "pwd")
    ec.register_connection(a, node)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    expected = f"{os.environ['HOME']}/nepi-home-test/nepi-exp/{ec.exp_id}/app-{a}/{ec.run_id}"
    assert ec.trace(a, "stdout").strip() == expected


# -- host rules: depends installs only what is missing, one run at a time per host ---------------------

DUMMY = "nepi-dist-test-dummy"


@pytest.fixture(scope="module")
def apt_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real local apt repository holding one empty .deb built here; yields the environment
    (``APT_CONFIG``) that makes apt-get see it, and only it, as its package source.

    apt-get, dpkg and the dpkg database are the system's: the package really is
    installed, and removed again after the module.
    """
    base = tmp_path_factory.mktemp("apt")
    pkg = base / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {DUMMY}\nVersion: 1.0\nArchitecture: all\nMaintainer: nepi_dist tests <nobody@invalid>\n"
        "Description: empty package the nepi_dist depends tests install\n"
    )
    (pkg / "usr" / "share" / "doc" / DUMMY).mkdir(parents=True)
    (pkg / "usr" / "share" / "doc" / DUMMY / "README").write_text("nothing\n")
    repo = base / "repo"
    repo.mkdir()
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(repo / f"{DUMMY}_1.0_all.deb")], check=True,
                   capture_output=True)
    packages = subprocess.run(["dpkg-scanpackages", ".", "/dev/null"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (base / d).mkdir(parents=True)
    (base / "sources.list").write_text(f"deb [trusted=yes] file:{repo} ./\n")
    conf = base / "apt.conf"
    conf.write_text(
        f'Dir::Etc::SourceList "{base}/sources.list";\nDir::Etc::SourceParts "{base}/sources.list.d";\n'
        f'Dir::State::Lists "{base}/lists";\nDir::Cache "{base}/cache";\nAPT::Sandbox::User "root";\n'
    )
    env = {"APT_CONFIG": str(conf)}
    subprocess.run(["apt-get", "update", "-q"], env={**os.environ, **env}, check=True, capture_output=True)
    try:
        yield env
    finally:
        remove_dummy()


def remove_dummy() -> None:
    subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "remove", "-y", "-q", DUMMY],
                   capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def installed(package: str) -> bool:
    out = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True).stdout
    return "Status: install ok installed" in out


@pytest.fixture
def missing_dummy(apt_repo: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The dummy package not installed, and this process's in-process worker seeing the local repo."""
    remove_dummy()
    assert not installed(DUMMY)
    for key, value in apt_repo.items():
        monkeypatch.setenv(key, value)
    return apt_repo


def dpkg_installs(since: int) -> list[str]:
    """The ``install`` lines /var/log/dpkg.log gained past byte ``since``."""
    with open("/var/log/dpkg.log", "rb") as f:
        f.seek(since)
        return [line for line in f.read().decode().splitlines() if f" install {DUMMY}:" in line]


def log_size() -> int:
    return os.path.getsize("/var/log/dpkg.log")


@pytest.mark.serial
def test_depends_on_installed_packages_runs_no_package_manager_and_takes_no_lock(ec: ExperimentController) -> None:
    holder = open(PACKAGE_LOCK, "a+")  # noqa: SIM115  (held for the whole test)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # an install that needed the lock would wait for ever here
        a = on_localhost(ec, "LinuxApplication", command="true", depends="coreutils bash")
        ec.deploy()
        ec.wait_finished(a, timeout=30)
    finally:
        holder.close()
    assert ec.state(a) == ResourceState.FINISHED, ec.get_resource(a).error_message
    assert ec.trace(a, "deploy_stdout").strip() == "nepi_dist: already installed: coreutils bash"


@pytest.mark.serial
def test_three_applications_depending_on_one_missing_package_install_it_once_taking_turns(
    ec: ExperimentController, missing_dummy: dict[str, str]
) -> None:
    since = log_size()
    node = ec.register_resource("LinuxNode")
    apps = []
    for _ in range(3):
        a = ec.register_resource("LinuxApplication")
        ec.set(a, "depends", f"coreutils {DUMMY}")
        ec.set(a, "command", f"dpkg -s {DUMMY} | grep -c 'install ok installed'")
        ec.register_connection(a, node)
        apps.append(a)
    ec.deploy()
    ec.wait_finished(apps, timeout=300)
    for a in apps:
        assert ec.state(a) == ResourceState.FINISHED, (ec.get_resource(a).error_message,
                                                      ec.trace(a, "deploy_stderr"))
        assert ec.trace(a, "stdout").strip() == "1"
    outs = [ec.trace(a, "deploy_stdout") for a in apps]
    installers = [o for o in outs if f"nepi_dist: installing {DUMMY} " in o]
    assert len(installers) == 1, outs  # only the missing package, and by one application
    assert len(dpkg_installs(since)) == 1  # dpkg itself installed it once
    released = float(re.search(r"released the package lock (\S+)", installers[0]).group(1))  # type: ignore[union-attr]
    for out in outs:
        if out is installers[0]:
            continue
        meanwhile = re.search(r"installed meanwhile \(lock held (\S+), waited from (\S+)\)", out)
        if meanwhile:  # it found the package missing, waited for the lock, then found it installed
            assert float(meanwhile.group(1)) >= released
        else:
            assert out.startswith("nepi_dist: already installed"), out


@pytest.mark.serial
def test_an_install_waits_for_the_host_lock_another_holds_instead_of_failing(
    ec: ExperimentController, missing_dummy: dict[str, str]
) -> None:
    held = threading.Event()

    def hold() -> None:
        with open(PACKAGE_LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            held.set()
            time.sleep(3.0)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    a = on_localhost(ec, "LinuxApplication", command="true", depends=DUMMY)
    ec.deploy()
    ec.wait_finished(a, timeout=120)
    holder.join()
    assert ec.state(a) == ResourceState.FINISHED, ec.trace(a, "deploy_stderr")
    found = re.search(r"installing \S+ \(lock held (\S+), waited from (\S+)\)", ec.trace(a, "deploy_stdout"))
    assert found, ec.trace(a, "deploy_stdout")
    assert float(found.group(1)) - float(found.group(2)) >= 2.0
    assert installed(DUMMY)


@pytest.mark.serial
def test_an_install_waits_for_the_dpkg_frontend_lock_another_program_holds(
    ec: ExperimentController, missing_dummy: dict[str, str]
) -> None:
    held = threading.Event()

    def hold() -> None:
        fd = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)  # what dpkg and apt take (a POSIX record lock)
            held.set()
            time.sleep(3.0)
        finally:
            os.close(fd)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    start = time.monotonic()
    a = on_localhost(ec, "LinuxApplication", command="true", depends=DUMMY)
    ec.deploy()
    ec.wait_finished(a, timeout=120)
    holder.join()
    assert ec.state(a) == ResourceState.FINISHED, ec.trace(a, "deploy_stderr")
    assert time.monotonic() - start >= 2.5
    assert installed(DUMMY)


# -- NEPI-style scripts, unchanged, as real processes --------------------------------------------------

SCRIPTS = [ROOT / "tests" / "nepi_scripts" / f"{name}.py"
           for name in ("ping_trace", "file_transfer", "conditions20", "tcpdump_pcap")]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_a_nepi_style_script_importing_only_nepi_runs_unchanged(script: Path, tmp_path: Path) -> None:
    imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", script.read_text(), re.M)
    assert all(m == "nepi" or m.startswith("nepi.") or m in sys.stdlib_module_names for m in imports), imports
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEPI_DIST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, f"{shlex.quote(str(script))} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "OK" in proc.stdout.splitlines()[-1]


# -- host rules: cleanProcessesAfter ------------------------------------------------------------------


@pytest.mark.parametrize("clean", [True, False])
def test_clean_processes_after_kills_at_release_what_still_runs_from_the_experiment_on_a_remote_host(
    clean: bool, ec: ExperimentController, sshd: SSHServer
) -> None:
    node = ec.register_resource("LinuxNode")
    for name, value in dict(hostname="127.0.0.1", port=sshd.port, username=sshd.username,
                            identity=sshd.identity, serverKey=sshd.server_key, cleanProcessesAfter=clean).items():
        ec.set(node, name, value)
    # The application ends at once, leaving a process of its own session behind (its group is gone).
    a = ec.register_resource("LinuxApplication")
    ec.set(a, "code", "#!/bin/bash\nsleep 300\n")
    ec.set(a, "command", "setsid ${APP_HOME}/code > /dev/null 2>&1 < /dev/null & echo left")
    ec.register_connection(a, node)
    ec.deploy()
    ec.wait_finished(a, timeout=60)
    pattern = f"{ec.get_resource(node).exp_home}/app-{a}/code"  # type: ignore[attr-defined]

    def alive() -> bool:
        return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0

    assert alive()
    ec.release()
    ec.wait_released([a, node], timeout=60)
    try:
        assert alive() is not clean
    finally:
        subprocess.run(["pkill", "-f", pattern], capture_output=True)


@pytest.mark.serial
def test_two_worker_processes_installing_one_missing_package_on_one_host_take_turns(
    missing_dummy: dict[str, str], redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One action at a time per worker: while one holds the host's package lock, the other one
    # takes the next deploy, so both worker processes reach the host (its $PPID in build says which).
    procs = [start_worker_process(redis_server.url, f"pkg{i}", 1) for i in (1, 2)]
    try:
        wait_for_workers(redis_server.url, 2)
        monkeypatch.setenv("NEPI_DIST_REDIS_URL", redis_server.url)
        ec = ExperimentController()
        since = log_size()
        node = ec.register_resource("LinuxNode")
        apps = []
        for _ in range(4):
            a = ec.register_resource("LinuxApplication")
            ec.set(a, "depends", DUMMY)
            ec.set(a, "build", "echo worker $PPID")
            ec.set(a, "command", "true")
            ec.register_connection(a, node)
            apps.append(a)
        ec.deploy()
        ec.wait_finished(apps, timeout=300)
        outs = [ec.trace(a, "deploy_stdout") for a in apps]
        states = [ec.state(a) for a in apps]
        ec.shutdown()
    finally:
        for p in procs:
            stop_process(p)
    assert states == [ResourceState.FINISHED] * 4, outs
    workers = {re.search(r"^worker (\d+)$", o, re.M).group(1) for o in outs}  # type: ignore[union-attr]
    assert workers == {str(p.pid) for p in procs}
    assert sum(f"nepi_dist: installing {DUMMY} " in o for o in outs) == 1, outs
    assert len(dpkg_installs(since)) == 1
