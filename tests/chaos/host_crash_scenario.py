"""By hand: what a Redis host power loss does to a run under ``appendfsync everysec`` (measured, README).

NOT IN ``make test`` (its name does not match ``test_*.py``): run it with
``pytest -s tests/chaos/host_crash_scenario.py``.  It is
:mod:`tests.chaos.hostcrash`'s scenario of ``test_redis_host_crash.py``
under ``everysec``, where the power loss takes back up to ~1 s of
acknowledged writes: a run cannot stay exactly-once across that (an action
whose claim, transitions and finish were all in the lost second runs again;
see the causes it prints).  It asserts only that the loss was real (writes
of the run were dropped) and prints the ``CHAOS redis-host-crash-everysec``
line: lost, duplicated, stuck.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from .harness import Cluster
from .hostcrash import host_crash_runs


@pytest.mark.timeout(400)
def test_a_redis_host_power_loss_under_appendfsync_everysec_drops_acknowledged_writes_of_the_run(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    recorded: dict[str, object] = {}

    def record(name: str, value: object) -> None:
        recorded[name] = value
        record_property(name, value)

    problems = host_crash_runs(cluster, record, "everysec")
    print("\n".join(["  broken promises (expected under everysec):", *problems]), flush=True)
    figures = json.loads(str(recorded["chaos:redis-host-crash-everysec"]))
    assert figures["dropped_writes"] > 0, "the power loss took back no write: nothing was measured"
