"""Traces declared as metadata on resource types."""

from __future__ import annotations


class TraceAttr:
    """What :meth:`ExperimentController.trace` returns about a trace."""

    ALL = "all"
    STREAM = "stream"
    PATH = "path"
    SIZE = "size"


class Trace:
    """One declared trace (an output a resource can record) of a resource type."""

    def __init__(self, name: str, help: str = "", enabled: bool = False) -> None:
        self.name = name
        self.help = help
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"Trace({self.name!r})"
