"""Lifecycle states and actions of a resource, ordered as in NEPI."""

from __future__ import annotations

import enum


class ResourceState(enum.IntEnum):
    """The ordered lifecycle states of a resource manager."""

    NEW = 0
    DISCOVERED = 1
    PROVISIONED = 2
    READY = 3
    STARTED = 4
    STOPPED = 5
    FINISHED = 6
    FAILED = 7
    RELEASED = 8


class ResourceAction(enum.IntEnum):
    """The actions a condition can gate."""

    DEPLOY = 0
    START = 1
    STOP = 2


ResourceState2str: dict[int, str] = {s.value: s.name for s in ResourceState}

#: The timestamp property name of each state, as NEPI names them.
STATE_TIME_NAMES: dict[ResourceState, str] = {
    ResourceState.DISCOVERED: "discover_time",
    ResourceState.PROVISIONED: "provision_time",
    ResourceState.READY: "ready_time",
    ResourceState.STARTED: "start_time",
    ResourceState.STOPPED: "stop_time",
    ResourceState.FINISHED: "finish_time",
    ResourceState.FAILED: "failed_time",
    ResourceState.RELEASED: "release_time",
}


def state_from(value: object) -> ResourceState:
    """Return the ResourceState for an int or a state name; raise ValueError otherwise."""
    if isinstance(value, ResourceState):
        return value
    if isinstance(value, str):
        return ResourceState[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool):
        return ResourceState(value)
    raise ValueError(f"not a resource state: {value!r}")
