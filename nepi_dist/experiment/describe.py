"""A run's description as an experiment file: what ``ec.save`` writes.

:func:`describe` reads the run's store (one pipelined read of every RM) and
returns the document :class:`~nepi_dist.experiment.file.Experiment` reads
back: every resource by label (the one it was given, else ``<type>-<guid>``)
with its type, guid, the attributes that were set, its enabled traces; the
connections, the conditions and the run's globals.  Everything is sorted
(resources by guid, attributes and traces by name), so the same description
always gives the same file: save, load and save again writes it unchanged.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import yaml

from nepi_dist.errors import ArgumentTypeError, ArgumentValueError, shown
from nepi_dist.experiment.file import FORMAT_VERSION, REFERENCE, file_format
from nepi_dist.model.resource import default_label
from nepi_dist.model.state import ResourceAction, ResourceState

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext

#: The first line of a saved YAML file.
YAML_HEADER = "# nepi_dist experiment file, version 1 (README: \"The experiment file\")\n"


def _value(raw: str) -> Any:
    """A stored attribute value as the file writes it: a string that looks like a
    ``{{ reference }}`` is written ``{literal: ...}`` so that a load keeps it as it is."""
    value = json.loads(raw)
    return {"literal": value} if isinstance(value, str) and REFERENCE.search(value) else value


def _labels(guids: list[int], hashes: list[dict[str, str]]) -> dict[int, str]:
    """Each RM's label; a label met twice gets ``-<guid>`` on its second owner."""
    labels: dict[int, str] = {}
    used: set[str] = set()
    for g, h in zip(guids, hashes, strict=True):
        label = h.get("label") or default_label(h.get("rtype", "rm"), g)
        if label in used:
            label = f"{label}-{g}"
        used.add(label)
        labels[g] = label
    return labels


def describe(ec: RunContext) -> dict[str, Any]:
    """Return the run's description as an experiment file's document (see the module docstring)."""
    store = ec.store
    guids = store.guids()
    hashes = store.rm_all_many(guids)
    labels = _labels(guids, hashes)
    doc: dict[str, Any] = {"version": FORMAT_VERSION, "exp_id": ec.exp_id}
    globals_: dict[str, dict[str, Any]] = {}
    for field, raw in sorted(store.run_fields().items()):
        if field.startswith("g:"):
            rtype, _, name = field[2:].rpartition(":")
            globals_.setdefault(rtype, {})[name] = _value(raw)
    if globals_:
        doc["globals"] = globals_
    resources: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for g, h in zip(guids, hashes, strict=True):
        entry: dict[str, Any] = {"type": h.get("rtype", ""), "guid": g}
        attrs = {f[2:]: _value(v) for f, v in sorted(h.items()) if f.startswith("a:")}
        if attrs:
            entry["attributes"] = attrs
        traces = sorted(f[3:] for f, v in h.items() if f.startswith("tr:") and v == "1")
        if traces:
            entry["traces"] = traces
        resources[labels[g]] = entry
        conds = json.loads(h["cond"]) if h.get("cond") else {}
        for action in sorted(conds, key=int):
            for group, state, time in conds[action]:
                after = [labels[m] for m in group if m in labels]
                if not after:
                    continue
                cond: dict[str, Any] = {"resources": [labels[g]], "action": ResourceAction(int(action)).name,
                                        "after": after, "state": ResourceState(int(state)).name}
                if time is not None:
                    cond["time"] = time
                conditions.append(cond)
    doc["resources"] = resources
    pairs = [[labels[g], labels[c]] for g, cs in zip(guids, store.connections_of_many(guids), strict=True)
             for c in sorted(cs) if g < c and c in labels]
    if pairs:
        doc["connections"] = pairs
    if conditions:
        doc["conditions"] = conditions
    return doc


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing a list of scalars on one line (``traces: [stdout]``, ``- [ping, node]``)."""

    def represent_list(self, data: list[Any]) -> yaml.Node:
        flow = all(not isinstance(v, (dict, list)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


    def represent_dict(self, data: dict[Any, Any]) -> yaml.Node:
        flow = list(data) == ["literal"]  # {literal: "..."} on the line of its attribute
        return self.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(dict, _Dumper.represent_dict)


def dump(doc: dict[str, Any], fmt: str = "yaml") -> str:
    """Return the text of an experiment file holding ``doc``: ``yaml`` or ``json``."""
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ArgumentValueError(f"unknown format {shown(fmt)}: yaml or json (NEPI's xml is read, not written)")
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
    return YAML_HEADER + body


def save_description(ec: RunContext, dirpath: str | os.PathLike[str] | None = None, fmt: str = "yaml") -> str:
    """Write :func:`describe` of ``ec`` as a file; return its path (see ``ExperimentController.save``).

    The text is made before anything is written, and the file is replaced in
    one step (written beside it, then renamed): a reader never sees half a file.
    """
    if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
        raise ArgumentTypeError(f"dirpath is a path or None, not {shown(dirpath)}")
    if not isinstance(fmt, str):
        raise ArgumentTypeError(f"format is 'yaml' or 'json', not {shown(fmt)}")
    path = os.path.abspath(os.fspath(dirpath if dirpath is not None else ec.run_dir))
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml", ".json"):
        fmt = file_format(path)
    else:
        fmt = fmt.lower()
        path = os.path.join(path, f"{ec.exp_id}.{fmt}")
    text = dump(describe(ec), fmt)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.part"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)
    return path
