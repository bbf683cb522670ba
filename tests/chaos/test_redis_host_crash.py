"""Chaos 6: the Redis host loses power mid-run under ``appendfsync always``, three runs over.

What the disk holds is what Redis fsynced (:mod:`tests.chaos.powerloss`);
under ``always`` Redis fsyncs before it replies, so the crash loses no write a
client was told of, and the run must stay exactly-once: every start and finish
takes effect once, within :data:`REDELIVERY` s of Redis being back, every RM
ends FINISHED, no worker exits (:mod:`tests.chaos.hostcrash`).  The same
scenario under ``everysec`` is measured by hand (``host_crash_scenario.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .harness import Cluster
from .hostcrash import host_crash_runs


@pytest.mark.timeout(300)
def test_a_redis_host_power_loss_under_appendfsync_always_loses_no_action_and_runs_none_twice(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    problems = host_crash_runs(cluster, record_property, "always")
    assert not problems, "\n".join(problems)
