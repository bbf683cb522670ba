"""NEPI 3.1's XML experiment files (``ec.save()`` / ``persist=True`` there), read into our document.

NEPI's ``nepi/util/parsers/xml_parser.py`` writes one ``<experiment exp_id run_id
nthreads>`` holding an ``<rm guid rtype state …>`` per resource with
``<attributes>`` (``<attribute name value type>``, type ``string``, ``bool``,
``integer`` or ``float``, ``None`` for no value), ``<connections>``
(``<connection guid>``, written on both ends), ``<conditions>``
(``<condition action group state time>``, numbers as NEPI's enums, ``group`` a
Python list of guids) and ``<traces>`` (``<trace name>``).  Each RM becomes a
resource labelled ``<type>-<guid>`` with its guid; the states and times NEPI
also wrote are ignored (a loaded run starts NEW, as in NEPI).

Read with the standard library's expat parser, which resolves no external
entity; a document type declaration (the only way to declare entities) is
refused before parsing, and NEPI never writes one.  NEPI's reader ``eval``s the
condition group; here it must be a plain list of integers.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from nepi_dist.errors import ExperimentFileError, shown
from nepi_dist.model.resource import default_label
from nepi_dist.model.state import ResourceAction, ResourceState

_GROUP = re.compile(r"^\s*[\[(]?\s*(\d+(\s*,\s*\d+)*)?\s*,?\s*[\])]?\s*$")
_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _value(kind: str, text: str, where: str, source: str | None) -> Any:
    """An attribute value as NEPI's ``to_type`` reads it, without its Python 2 quirks."""
    if text == "None":
        return None
    try:
        if kind == "bool":
            if text not in ("True", "False"):
                raise ValueError(f"not True or False: {shown(text)}")
            return text == "True"
        if kind == "integer":
            return int(text)
        if kind == "float":
            number = float(text)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"not a finite number: {shown(text)}")
            return number
    except ValueError as exc:
        raise ExperimentFileError(where, str(exc), source) from None
    if kind != "string":
        raise ExperimentFileError(where, f"unknown type {shown(kind)}: string, bool, integer or float", source)
    return text


def _int(node: ET.Element, name: str, where: str, source: str | None) -> int:
    text = node.get(name)
    if text is None or not re.fullmatch(r"\s*\d{1,16}\s*", text):
        raise ExperimentFileError(f"{where}@{name}", f"expects a non-negative integer, not {shown(text)}", source)
    return int(text)


def document_from_xml(text: str, source: str | None = None) -> dict[str, Any]:
    """Return the experiment document of a NEPI 3.1 XML text, else raise ExperimentFileError
    (its path an XPath-like ``/experiment/rm[2]/attributes/attribute[1]@value``)."""
    if _DECLARATION.search(text):
        raise ExperimentFileError("/", "a document type or entity declaration is not accepted", source)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ExperimentFileError("/", f"not valid XML: {exc}", source) from None
    if root.tag != "experiment":
        raise ExperimentFileError(f"/{root.tag}", "the root element is <experiment>", source)
    rms = root.findall("rm")
    guids: dict[int, str] = {}
    for i, rm in enumerate(rms, 1):
        where = f"/experiment/rm[{i}]"
        guid = _int(rm, "guid", where, source)
        if guid in guids:
            raise ExperimentFileError(f"{where}@guid", f"guid {guid} is written twice", source)
        guids[guid] = default_label(rm.get("rtype") or "rm", guid)
    doc: dict[str, Any] = {"version": 1}
    if root.get("exp_id"):
        doc["exp_id"] = root.get("exp_id")
    resources: dict[str, Any] = {}
    pairs: set[tuple[int, int]] = set()
    conditions: list[dict[str, Any]] = []
    for i, rm in enumerate(rms, 1):
        where = f"/experiment/rm[{i}]"
        guid = int(rm.get("guid", "0"))
        entry: dict[str, Any] = {"type": rm.get("rtype") or "", "guid": guid}
        attrs = {}
        for j, node in enumerate(rm.findall("attributes/attribute"), 1):
            at = f"{where}/attributes/attribute[{j}]"
            name = node.get("name")
            if not name:
                raise ExperimentFileError(f"{at}@name", "an attribute has a name", source)
            attrs[name] = _value(node.get("type", "string"), node.get("value", ""), f"{at}@value", source)
        if attrs:
            entry["attributes"] = attrs
        traces = [node.get("name") or "" for node in rm.findall("traces/trace")]
        if traces:
            entry["traces"] = sorted(set(traces))
        for j, node in enumerate(rm.findall("connections/connection"), 1):
            other = _int(node, "guid", f"{where}/connections/connection[{j}]", source)
            if other not in guids:
                raise ExperimentFileError(f"{where}/connections/connection[{j}]@guid",
                                          f"no <rm> has guid {other}", source)
            if other != guid:
                pairs.add((min(guid, other), max(guid, other)))
        for j, node in enumerate(rm.findall("conditions/condition"), 1):
            at = f"{where}/conditions/condition[{j}]"
            action, state = _int(node, "action", at, source), _int(node, "state", at, source)
            if action not in set(ResourceAction) or state not in set(ResourceState):
                raise ExperimentFileError(at, f"unknown action {action} or state {state}", source)
            match = _GROUP.match(node.get("group") or "")
            if match is None or match.group(1) is None:
                raise ExperimentFileError(f"{at}@group", f"expects a list of guids, not {shown(node.get('group'))}",
                                          source)
            group = [int(g) for g in match.group(1).split(",")]
            unknown = [g for g in group if g not in guids]
            if unknown:
                raise ExperimentFileError(f"{at}@group", f"no <rm> has guid {unknown[0]}", source)
            cond: dict[str, Any] = {"resources": [guids[guid]], "action": ResourceAction(action).name,
                                    "after": [guids[g] for g in group], "state": ResourceState(state).name}
            time = node.get("time")
            if time not in (None, "", "None"):
                cond["time"] = time
            conditions.append(cond)
        resources[guids[guid]] = entry
    doc["resources"] = resources
    if pairs:
        doc["connections"] = [[guids[a], guids[b]] for a, b in sorted(pairs)]
    if conditions:
        doc["conditions"] = conditions
    return doc
