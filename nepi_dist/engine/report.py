"""What a run looks like to a person: each RM's type, state, host, command, times and error.

Read straight from the run's keys (one pipelined round trip per 500 RMs), by
the controller (to say what failed) and by the ``nepi-dist`` command (from
any machine that reaches the run's Redis).  Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nepi_dist.engine.routing import NODE_RTYPE
from nepi_dist.engine.store import FailureLevel, Store
from nepi_dist.model.state import ResourceState

#: The failure levels by name, as every message names them.
FAILURE_LEVEL_NAMES = {FailureLevel.OK: "OK", FailureLevel.RM_FAILURE: "RM_FAILURE",
                       FailureLevel.EC_FAILURE: "EC_FAILURE"}
#: The attributes that say where an RM runs, in the order they are preferred.
_HOST_ATTRS = ("a:worker", "a:hostname")
_FIELDS = ("rtype", "state", "err", "a:command", *_HOST_ATTRS, *(f"t{int(s)}" for s in ResourceState))


def level_name(level: int) -> str:
    """Return the name of a failure level (``OK``, ``RM_FAILURE``, ``EC_FAILURE``)."""
    return FAILURE_LEVEL_NAMES.get(level, str(level))


@dataclass
class Row:
    """One RM as a person sees it."""

    guid: int
    rtype: str
    state: int
    host: str | None = None
    command: str | None = None
    error: str | None = None
    times: dict[int, float] = field(default_factory=dict)  # state -> Redis-clock time it was entered

    @property
    def state_name(self) -> str:
        return ResourceState(self.state).name if self.state in ResourceState._value2member_map_ else str(self.state)

    @property
    def since(self) -> float | None:
        """When the RM entered its current state (Redis clock), if known."""
        return self.times.get(self.state)

    def as_json(self) -> dict[str, Any]:
        return {"guid": self.guid, "rtype": self.rtype, "state": self.state_name, "host": self.host,
                "command": self.command, "error": self.error,
                "times": {ResourceState(s).name: t for s, t in sorted(self.times.items())}}


def _decode(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return None if value is None or value == "" else str(value)


def _host(values: Mapping[str, str | None]) -> str | None:
    """Where an RM's hash says it runs: its host worker, else its hostname (a linux::Node's default)."""
    host = next((h for h in (_decode(values.get(a)) for a in _HOST_ATTRS) if h), None)
    return host or ("localhost" if values.get("rtype") == NODE_RTYPE else None)


def _row(guid: int, values: Mapping[str, str | None]) -> Row | None:
    if values.get("rtype") is None:
        return None
    times = {int(s): float(t) for s in ResourceState if (t := values.get(f"t{int(s)}"))}
    host = _host(values)
    return Row(guid, str(values["rtype"]), int(values.get("state") or 0), host,
               _decode(values.get("a:command")), values.get("err"), times)


def rows(store: Store, guids: Sequence[int] | None = None) -> list[Row]:
    """Return the rows of ``guids`` (default: every RM of the run), hosts taken from connected nodes.

    A frozen store (a controller shut down) answers from its snapshot.
    """
    if store.frozen:
        snapshot = store._frozen or {}
        wanted = sorted(snapshot.get("rms", {})) if guids is None else list(guids)
        return rows_of(snapshot.get("rms", {}), snapshot.get("conns", {}), wanted)
    guids = store.guids() if guids is None else list(guids)
    hashes: dict[int, dict[str, str | None]] = {}
    conns: dict[int, set[int]] = {}
    for i in range(0, len(guids), 500):
        chunk = guids[i : i + 500]
        pipe = store.client.pipeline(transaction=False)
        for g in chunk:
            pipe.hmget(store.keys.rm(g), list(_FIELDS))
            pipe.smembers(store.keys.conn(g))
        replies = pipe.execute()
        for j, g in enumerate(chunk):
            hashes[g] = dict(zip(_FIELDS, replies[2 * j], strict=True))
            conns[g] = {int(c) for c in replies[2 * j + 1]}
    missing = sorted({c for g in guids for c in conns.get(g, ())} - set(hashes))
    if missing:
        pipe = store.client.pipeline(transaction=False)
        for g in missing:
            pipe.hmget(store.keys.rm(g), ["rtype", *_HOST_ATTRS])
        for g, values in zip(missing, pipe.execute(), strict=True):
            hashes[g] = dict(zip(["rtype", *_HOST_ATTRS], values, strict=True))
    return rows_of(hashes, conns, guids)


def rows_of(hashes: Mapping[int, Mapping[str, str | None]], conns: Mapping[int, set[int]],
            guids: Sequence[int]) -> list[Row]:
    """Return the rows of ``guids`` from RM hashes and connections (an RM without a host of its own
    takes the host of the first node it is connected to that has one)."""
    found = [r for g in guids if (r := _row(g, hashes.get(g, {}))) is not None]
    hosts: dict[int, str | None] = {}
    for row in found:
        if row.host:
            continue
        for c in sorted(conns.get(row.guid, ())):
            if c not in hosts:
                hosts[c] = _host(hashes.get(c, {}))
            if hosts[c]:
                row.host = hosts[c]
                break
    return found


def error_tail(error: str | None, lines: int = 3) -> str:
    """Return the last ``lines`` non-empty lines of an error text."""
    if not error:
        return ""
    kept = [line for line in error.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def describe(row: Row) -> str:
    """Say what failed, in one line: type, guid, host, command, reason."""
    where = f" on {row.host}" if row.host else ""
    command = f" running {row.command!r}" if row.command else ""
    reason = " | ".join(error_tail(row.error).splitlines()) or "no reason recorded"
    return f"{row.rtype} guid {row.guid}{where}{command}: {reason}"
