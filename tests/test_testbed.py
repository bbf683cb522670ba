"""One experiment across three hosts: network namespaces on this machine, a host worker in each.

The testbed (``tests/testbed.py`` over ``scripts/netns-testbed.sh``) needs root, which
this machine and CI have: these tests are never skipped, and fail when ``ip netns``
does.  Hosts ``h1``..``h3`` are namespaces bridged to the root namespace, where a
private Redis listens on the bridge's address; each runs ``nepi-dist worker --host hK``
with hostname ``hK``.  Every test runs its own experiment and shuts it down.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, ResourceAction, ResourceState

from .testbed import Journal, Testbed

HOSTS = 3
#: The broker's visibility timeout, for the workers and the controllers: an action held
#: by a SIGKILLed worker is delivered again this long after it was first delivered.
VISIBILITY = 10


@pytest.fixture(scope="module")
def testbed() -> Iterator[Testbed]:
    bed = Testbed(
        hosts=HOSTS,
        rm_modules=("tests.testbed",),
        env={"NEPI_DIST_VISIBILITY_TIMEOUT": str(VISIBILITY)},
    ).up()
    try:
        yield bed
    finally:
        bed.close()
    assert bed.leftovers() == [], f"the testbed left {bed.leftovers()}"


@contextmanager
def experiment(testbed: Testbed) -> Iterator[ExperimentController]:
    ec = ExperimentController(redis_url=testbed.url, celery_settings={"visibility_timeout": VISIBILITY})
    try:
        yield ec
    finally:
        if not ec.store.frozen:
            ec.shutdown()


def node_on(ec: ExperimentController, testbed: Testbed, k: int) -> int:
    """A linux::Node served by host k's worker."""
    node = ec.register_resource("linux::Node")
    ec.set(node, "worker", testbed.host(k))
    return node


def application(ec: ExperimentController, node: int, command: str) -> int:
    app = ec.register_resource("linux::Application")
    ec.set(app, "command", command)
    ec.register_connection(app, node)
    return app


def assert_finished(ec: ExperimentController, guids: list[int]) -> None:
    states = {g: ec.state(g, hr=True) for g in guids}
    bad = {g: (s, ec.get_resource(g).error_message) for g, s in states.items() if s != "FINISHED"}
    assert not bad, bad


def test_an_application_on_each_host_runs_inside_that_host(testbed: Testbed) -> None:
    with experiment(testbed) as ec:
        apps = {}
        for k in range(1, HOSTS + 1):
            apps[k] = application(ec, node_on(ec, testbed, k), "hostname; ip -4 -o addr show dev eth0")
        ec.deploy()
        ec.wait_finished(list(apps.values()), timeout=60)
        assert_finished(ec, list(apps.values()))
        for k, app in apps.items():
            out = ec.trace(app, "stdout")
            assert out.splitlines()[0] == testbed.host(k), out
            assert f"inet {testbed.address(k)}/24" in out, out
            others = [testbed.address(j) for j in range(1, HOSTS + 1) if j != k]
            assert not any(f"inet {a}/" in out for a in others), out


def test_a_ping_mesh_between_the_hosts_crosses_their_links_and_its_traces_are_read_at_the_controller(
    testbed: Testbed,
) -> None:
    with experiment(testbed) as ec:
        pings: dict[tuple[int, int], int] = {}
        for k in range(1, HOSTS + 1):
            node = node_on(ec, testbed, k)
            for j in range(1, HOSTS + 1):
                if j == k:
                    continue
                ping = ec.register_resource("linux::Ping")
                ec.set(ping, "target", testbed.address(j))
                ec.set(ping, "count", 3)
                ec.set(ping, "interval", 0.2)
                ec.set(ping, "deadline", 10)
                ec.set(ping, "numeric", True)
                ec.register_connection(ping, node)
                pings[(k, j)] = ping
        ec.deploy()
        ec.wait_finished(list(pings.values()), timeout=60)
        assert_finished(ec, list(pings.values()))
        for (k, j), ping in pings.items():
            out = ec.trace(ping, "stdout")
            assert "3 packets transmitted, 3 received, 0% packet loss" in out, (k, j, out)
            replies = re.findall(r"bytes from ([\d.]+):", out)
            assert replies == [testbed.address(j)] * 3, (k, j, out)


def test_a_condition_across_hosts_starts_the_client_on_h2_one_second_after_the_server_on_h1_started(
    testbed: Testbed,
) -> None:
    with experiment(testbed) as ec:
        server = application(ec, node_on(ec, testbed, 1), "sleep 3")
        client = application(ec, node_on(ec, testbed, 2), "hostname")
        ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "1s")
        ec.deploy()
        ec.wait_finished([server, client], timeout=60)
        assert_finished(ec, [server, client])
        started_server = ec.get_resource(server).start_time
        started_client = ec.get_resource(client).start_time
        assert started_server is not None and started_client is not None
        lateness = started_client - started_server - 1.0
        print(f"\ncross-host condition (h2 starts 1s after h1 STARTED): lateness {lateness * 1000:.1f} ms "
              "on the Redis clock")
        assert 0.0 <= lateness <= 0.05, f"client started {lateness:+.3f}s off its 1s condition"
        assert ec.trace(client, "stdout") == "h2\n"


def _journal(path: Path) -> list[tuple[str, float, int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        what, at, pid, host = line.split()
        rows.append((what, float(at), int(pid), host))
    return rows


def test_an_action_held_by_a_sigkilled_host_worker_is_done_once_by_its_restarted_worker(
    testbed: Testbed, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    with experiment(testbed) as ec:
        others = [application(ec, node_on(ec, testbed, k), "sleep 1") for k in (1, 2)]
        held = ec.register_resource(Journal.get_rtype())
        ec.set(held, "journal", str(journal))
        ec.set(held, "hold", 3.0)
        ec.register_connection(held, node_on(ec, testbed, 3))
        ec.deploy()

        deadline = time.monotonic() + 30
        while not _journal(journal) and time.monotonic() < deadline:
            time.sleep(0.02)
        first = _journal(journal)
        assert first and first[0][0] == "begin", f"h3 never began the deploy:\n{testbed.log(3)}"
        killed_pid = testbed.workers[3].pid
        assert first[0][2] == killed_pid and first[0][3] == "h3", first
        killed_at = testbed.kill_worker(3)
        testbed.restart_worker(3)
        restarted_pid = testbed.workers[3].pid

        ec.wait_finished([*others, held], timeout=VISIBILITY + 45)
        assert_finished(ec, [*others, held])
        rows = _journal(journal)
        begins = [r for r in rows if r[0] == "begin"]
        ends = [r for r in rows if r[0] == "end"]
        assert [r[2] for r in begins] == [killed_pid, restarted_pid], rows
        assert len(ends) == 1 and ends[0][2] == restarted_pid, rows
        redelivered = begins[1][1] - killed_at
        print(f"\nSIGKILL of h3's worker -> its held action began again on the restarted worker after "
              f"{redelivered:.2f}s (visibility_timeout {VISIBILITY}s)")
        assert redelivered <= VISIBILITY + 10, redelivered


def test_three_hosts_run_a_hundred_applications_each_where_they_are_routed(testbed: Testbed) -> None:
    per_host = 100
    with experiment(testbed) as ec:
        apps: dict[int, list[int]] = {}
        for k in range(1, HOSTS + 1):
            node = node_on(ec, testbed, k)
            apps[k] = [application(ec, node, "hostname") for _ in range(per_host)]
        every = [a for group in apps.values() for a in group]
        began = time.monotonic()
        ec.deploy()
        ec.wait_finished(every, timeout=150)
        took = time.monotonic() - began
        assert_finished(ec, every)
        print(f"\n{len(every)} applications on {HOSTS} hosts finished in {took:.1f}s")
        for k, group in apps.items():
            hosts = [ec.trace(a, "stdout").strip() for a in group]
            assert hosts == [testbed.host(k)] * per_host, {h: hosts.count(h) for h in set(hosts)}


def test_closing_the_testbed_removes_every_namespace_link_and_process_it_started(testbed: Testbed) -> None:
    workers = list(testbed.workers.values())
    testbed.close()
    assert testbed.leftovers() == []
    assert all(p.poll() is not None for p in workers)
    namespaces = Path("/run/netns")
    assert not any(p.name.startswith(testbed.prefix) for p in namespaces.iterdir()) if namespaces.exists() else True
