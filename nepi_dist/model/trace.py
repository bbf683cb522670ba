"""Traces declared as metadata on resource types."""

from __future__ import annotations

import os
from typing import Any

from nepi_dist.errors import ArgumentTypeError, ArgumentValueError, shown


class TraceAttr:
    """What :meth:`ExperimentController.trace` returns about a trace."""

    ALL = "all"
    STREAM = "stream"
    PATH = "path"
    SIZE = "size"


#: Every value a ``trace`` call's ``attr`` may take.
TRACE_ATTRS = frozenset({TraceAttr.ALL, TraceAttr.STREAM, TraceAttr.PATH, TraceAttr.SIZE})


def check_trace_args(attr: Any, block: Any, offset: Any) -> None:
    """Refuse a ``trace`` call's ``attr`` (one of :class:`TraceAttr`) or its
    ``block``/``offset`` (non-negative ints) before anything is read or sent."""
    if not isinstance(attr, str):
        raise ArgumentTypeError(f"a trace attr is a str (one of {sorted(TRACE_ATTRS)}), not {shown(attr)}")
    if attr not in TRACE_ATTRS:
        raise ArgumentValueError(f"unknown trace attr {shown(attr)}: expected one of {sorted(TRACE_ATTRS)}")
    for what, value in (("block", block), ("offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArgumentTypeError(f"a trace {what} is an int, not {shown(value)}")
        if value < 0:
            raise ArgumentValueError(f"a trace {what} is >= 0, not {value}")


class Trace:
    """One declared trace (an output a resource can record) of a resource type."""

    def __init__(self, name: str, help: str = "", enabled: bool = False) -> None:
        self.name = name
        self.help = help
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"Trace({self.name!r})"


def result_file_name(label: str, trace: str) -> str:
    """The file a collected trace is written to: ``<label>.<trace>`` (``ping.stdout``, or
    ``application-2.stdout`` for an RM with no label), with any character unsafe in a file
    name (``/``, a leading ``.``) replaced by ``_``."""
    name = f"{label}.{trace}".replace(os.sep, "_").replace("\\", "_").replace("\0", "_")
    return "_" + name[1:] if name.startswith(".") else name
