"""Which workers are alive: their heartbeats in Redis.

Every worker process keeps ``nepi:worker:<worker_id>`` alive (a JSON record
with a TTL) while it runs; ``{"dead": true}`` there is a tombstone left by a
successor that saw the process gone.  A claim held by a worker whose key expired may be
taken over; a host queue without any live worker makes deploys on that host
fail after a bounded wait; ``nepi-dist workers`` lists them.

A worker killed with SIGKILL leaves its key until the TTL runs out.  A new
worker started in the same PID space (same kernel boot, same PID namespace)
can tell at once that the old process is gone, and removes its key, so the
old worker's claims and watches are taken over without waiting for the TTL.
"""

from __future__ import annotations

import contextlib
import json
import os
from functools import cache
from typing import Any

import redis

from nepi_dist.engine.keys import worker_key, worker_pattern

#: Seconds a heartbeat outlives its last renewal.
HEARTBEAT_TTL = 15
#: Seconds between renewals.
HEARTBEAT_EVERY = 5.0


@cache
def pid_space() -> str:
    """Return an id of this process's PID space: kernel boot id and PID namespace."""
    boot = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    ns = ""
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return f"{boot}/{ns}"


def beat(client: redis.Redis, worker_id: str, info: dict[str, Any]) -> None:
    """Write (or renew) the heartbeat of ``worker_id``."""
    record = dict(info, pid=os.getpid(), space=pid_space())
    client.set(worker_key(worker_id), json.dumps(record), ex=HEARTBEAT_TTL)


def live_workers(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Return every live worker's id and heartbeat record (one SCAN and one MGET)."""
    keys = sorted(client.scan_iter(match=worker_pattern(), count=1000))
    if not keys:
        return {}
    prefix = len(worker_key(""))
    records = {k[prefix:]: json.loads(v) for k, v in zip(keys, client.mget(keys), strict=True) if v is not None}
    return {w: info for w, info in records.items() if not info.get("dead")}


def live_queues(client: redis.Redis) -> set[str]:
    """Return the queues served by at least one live worker."""
    return {q for info in live_workers(client).values() for q in info.get("queues") or []}


def clear_dead_in_my_space(client: redis.Redis, my_id: str) -> list[str]:
    """Remove the heartbeats of workers of this PID space whose process is gone; return their ids."""
    space = pid_space()
    cleared = []
    for worker_id, info in live_workers(client).items():
        if worker_id == my_id or info.get("space") != space or not space.strip("/"):
            continue
        pid = info.get("pid")
        if isinstance(pid, int) and not _alive(pid):
            # A tombstone, not a deletion: a claim whose holder's heartbeat is merely missing
            # is suspected only (a Redis stall expires live heartbeats); a dead one is taken over.
            client.set(worker_key(worker_id), json.dumps({"dead": True}), ex=HEARTBEAT_TTL)
            cleared.append(worker_id)
    return cleared


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
