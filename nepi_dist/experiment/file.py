"""The experiment file: one run's description, read, checked and registered into a controller.

A file is YAML (``.yaml``/``.yml``) or JSON (``.json``), validated against
``schema.json`` (next to this module); the README's "The experiment file"
shows one.  Reading never runs code: YAML is read by PyYAML's SafeLoader (with
aliases and duplicate keys refused too), JSON by the standard library (NaN and
duplicate keys refused).  Every problem is an :class:`ExperimentFileError`
naming the field by its JSON path, and nothing is registered until the whole
file, with its parameter values, has been checked.

Parameters are written ``{{ name }}`` in a string attribute value, a global
value, or a condition's time: a string that is exactly one reference takes the
parameter's typed value (``count: "{{ n }}"`` sets the Integer 3), a reference
inside a longer string is replaced by the value's text.  A string meant as it
is, braces included, is written ``{literal: "..."}`` (what a save writes when
a value happens to look like a reference).  ``${...}`` is left alone: it is
the Linux RMs' own substitution (``${HOME}``, ``${SRC}``, ...).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources as package_files
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from nepi_dist.errors import ExperimentFileError, NepiError, shown
from nepi_dist.experiment.nepi_xml import document_from_xml
from nepi_dist.model.attribute import Flags
from nepi_dist.model.resource import ResourceManager, ResourceRegistry, default_label
from nepi_dist.model.state import ResourceAction, ResourceState
from nepi_dist.model.timefuncs import delay_seconds

if TYPE_CHECKING:
    from nepi_dist.ec import ExperimentController

#: The format's version, the ``version`` field of every file.
FORMAT_VERSION = 1
#: A file larger than this is refused before it is parsed.
MAX_FILE_BYTES = 8 * 1024 * 1024
#: ``{{ name }}``: a parameter reference.
REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: What each parameter type accepts as a value, and the file's word for it.
PARAMETER_TYPES = ("string", "integer", "number", "boolean")
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(*parts: str | int) -> str:
    """Return the JSON path of a field: ``json_path("resources", "ping", "guid")`` is ``$.resources.ping.guid``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of the file (``nepi_dist/experiment/schema.json``)."""
    text = package_files.files("nepi_dist.experiment").joinpath("schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(schema())


# -- parsing -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing aliases (a few lines of ``*a`` can expand to gigabytes)
    and a key written twice in one mapping (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {shown(key)} is written twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {shown(key)} is written twice")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def file_format(path: str) -> str:
    """Return ``yaml`` or ``json`` from the file name's suffix, else raise ExperimentFileError."""
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    if suffix == ".xml":
        return "xml"
    raise ExperimentFileError("$", f"unknown file suffix {suffix or '(none)'!r}: use .yaml, .yml, .json "
                              "(or NEPI 3.1's .xml)", str(path))


def parse_text(text: str, fmt: str, source: str | None = None) -> Any:
    """Return the document a YAML, JSON (or NEPI 3.1 XML) text holds (no validation), else raise
    ExperimentFileError."""
    try:
        if fmt == "json":
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
        if fmt == "yaml":
            return yaml.load(text, Loader=_Loader)  # a SafeLoader: no object is ever built
        if fmt == "xml":
            return document_from_xml(text, source)
    except ExperimentFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ExperimentFileError("$", f"not valid YAML{where}: {exc.problem or exc.context}", source) from None
    except json.JSONDecodeError as exc:
        raise ExperimentFileError("$", f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
                                  source) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a duplicate key, an int of 5,000 digits
        raise ExperimentFileError("$", f"not valid {fmt.upper()}: {exc}", source) from None
    except RecursionError:
        raise ExperimentFileError("$", "nested too deeply", source) from None
    raise ExperimentFileError("$", f"unknown format {fmt!r}: yaml or json", source)


def _plain(value: Any, parts: tuple[str | int, ...], source: str | None) -> None:
    """Refuse anything but JSON's values (YAML also makes dates, bytes, sets, non-str keys)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, parts)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise ExperimentFileError(json_path(*where), f"a key is a string, not {shown(key)}", source)
                stack.append((sub, (*where, key)))
        elif isinstance(item, list):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                raise ExperimentFileError(json_path(*where), f"{item} is not a finite number", source)
        elif item is not None and not isinstance(item, (str, int, bool)):
            raise ExperimentFileError(json_path(*where), f"a {type(item).__name__} is not a JSON value "
                                      "(quote it to make it a string)", source)


def _check_schema(doc: Any, source: str | None) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
        raise ExperimentFileError(json_path(*error.absolute_path), message, source)


# -- parameters ----------------------------------------------------------------------


def _typed(kind: str, value: Any) -> Any:
    """Return ``value`` as a ``kind`` parameter value (text as the command line gives it
    is converted), else raise ValueError saying why."""
    if kind == "string":
        if isinstance(value, str):
            return value
    elif kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,18}\s*", value):
            return int(value)
    elif kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value == value and value not in (float("inf"), float("-inf")):
                return value
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if number == number and number not in (float("inf"), float("-inf")):
                return int(number) if re.fullmatch(r"\s*[-+]?\d{1,18}\s*", value) else number
    raise ValueError(f"expects {'an' if kind == 'integer' else 'a'} {kind}, not {shown(value)}")


def _text(value: Any) -> str:
    """A parameter value inside a longer string: booleans as ``true``/``false``."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Parameter:
    """One declared parameter: ``default`` None means it must be given a value."""

    name: str
    type: str
    default: Any = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    def value(self, given: Any) -> Any:
        """Return ``given`` as this parameter's value (a str is converted), else raise ValueError."""
        return _typed(self.type, given)


def _infer_type(default: Any) -> str:
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int):
        return "integer"
    return "number" if isinstance(default, float) else "string"


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    """Return ``value`` with its ``{{ name }}`` references replaced (``{literal: s}`` is ``s``)."""
    if isinstance(value, dict):
        return value["literal"]
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value.strip())
    if whole:
        return params[whole.group(1)]
    return REFERENCE.sub(lambda m: _text(params[m.group(1)]), value)


def references(value: Any) -> list[str]:
    """The parameter names a value refers to (none in a ``{literal: ...}``)."""
    return REFERENCE.findall(value) if isinstance(value, str) else []


# -- the experiment ------------------------------------------------------------------


class Experiment:
    """A checked experiment file: its parameters, sweep and resources, ready to :meth:`build`.

    Made by :func:`read_experiment` (a file), :func:`parse_experiment` (a text) or
    :meth:`from_document` (the document itself, e.g. what
    :func:`nepi_dist.experiment.describe.describe` returns).
    """

    def __init__(self, doc: dict[str, Any], source: str | None = None) -> None:
        """``doc`` must already fit the schema: use :meth:`from_document`, which checks it first."""
        self._doc = doc
        self.source = source
        self.parameters: dict[str, Parameter] = {}
        self.sweep: dict[str, list[Any]] = {}
        self._check()

    @classmethod
    def from_document(cls, doc: Any, source: str | None = None) -> Experiment:
        """Check ``doc`` (the file's content as Python values) and return the Experiment."""
        _plain(doc, (), source)
        _check_schema(doc, source)
        return cls(json.loads(json.dumps(doc)), source)  # a copy: later changes to doc do not reach it

    @property
    def document(self) -> dict[str, Any]:
        """A copy of the file's content."""
        copied: dict[str, Any] = json.loads(json.dumps(self._doc))
        return copied

    @property
    def exp_id(self) -> str | None:
        return self._doc.get("exp_id")

    @property
    def labels(self) -> list[str]:
        """Every resource's label, in the file's order."""
        return list(self._doc["resources"])

    def _error(self, reason: str, *parts: str | int) -> ExperimentFileError:
        return ExperimentFileError(json_path(*parts), reason, self.source)

    # -- checks without a controller ----------------------------------------------

    def _check(self) -> None:
        doc = self._doc
        for name, spec in doc.get("parameters", {}).items():
            kind = spec.get("type") or _infer_type(spec["default"])
            default = spec.get("default")
            if default is not None:
                try:
                    if kind != "string" and isinstance(default, str):  # in the file, a default has its type
                        raise ValueError(f"expects {'an' if kind == 'integer' else 'a'} {kind}, not {shown(default)}")
                    default = _typed(kind, default)
                except ValueError as exc:
                    raise self._error(str(exc), "parameters", name, "default") from None
            self.parameters[name] = Parameter(name, kind, default, spec.get("help", ""))
        for name, values in doc.get("sweep", {}).items():
            if name not in self.parameters:
                raise self._error(f"{name!r} is not a declared parameter (declared: "
                                  f"{', '.join(self.parameters) or 'none'})", "sweep", name)
            checked = []
            for i, value in enumerate(values):
                try:
                    checked.append(self.parameters[name].value(value))
                except ValueError as exc:
                    raise self._error(str(exc), "sweep", name, i) from None
            self.sweep[name] = checked
        for where, value in self._values():
            for ref in references(value):
                if ref not in self.parameters:
                    raise self._error(f"unknown parameter {ref!r} in {{{{ }}}} (declared: "
                                      f"{', '.join(self.parameters) or 'none'})", *where)
        owners: dict[int, str] = {}
        for label, res in doc["resources"].items():
            guid = res.get("guid")
            if guid is not None:
                if guid in owners:
                    raise self._error(f"guid {guid} is also the guid of {owners[guid]!r}", "resources", label, "guid")
                owners[guid] = label
        known = doc["resources"]
        for i, pair in enumerate(doc.get("connections", [])):
            for j, label in enumerate(pair):
                if label not in known:
                    raise self._error(f"no resource is labelled {label!r}", "connections", i, j)
            if pair[0] == pair[1]:
                raise self._error("a resource connects to another one, not to itself", "connections", i)
        for i, cond in enumerate(doc.get("conditions", [])):
            for key in ("resources", "after"):
                for j, label in enumerate(cond[key]):
                    if label not in known:
                        raise self._error(f"no resource is labelled {label!r}", "conditions", i, key, j)

    def _values(self) -> Iterator[tuple[tuple[str | int, ...], Any]]:
        """Every value that may hold parameter references, with its path."""
        doc = self._doc
        for rtype, attrs in doc.get("globals", {}).items():
            for name, value in attrs.items():
                yield ("globals", rtype, name), value
        for label, res in doc["resources"].items():
            for name, value in res.get("attributes", {}).items():
                yield ("resources", label, "attributes", name), value
        for i, cond in enumerate(doc.get("conditions", [])):
            if "time" in cond:
                yield ("conditions", i, "time"), cond["time"]

    def points(self) -> list[dict[str, Any]]:
        """Every point of the sweep (the cartesian product of its values), in file order; [{}] with no sweep."""
        names = list(self.sweep)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.sweep.values())]

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return every parameter's value: ``params`` (text is converted) over the defaults."""
        given = dict(params or {})
        for name in given:
            if not isinstance(name, str) or name not in self.parameters:
                raise self._error(f"no parameter {shown(name)} is declared (declared: "
                                  f"{', '.join(self.parameters) or 'none'})", "parameters")
        values: dict[str, Any] = {}
        for name, param in self.parameters.items():
            if name in given:
                try:
                    values[name] = param.value(given[name])
                except ValueError as exc:
                    raise self._error(str(exc), "parameters", name) from None
            elif param.required:
                raise self._error("this parameter has no default: give it a value", "parameters", name)
            else:
                values[name] = param.default
        return values

    # -- checks against the types, then registration -------------------------------

    def _plan(self, registry: ResourceRegistry, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the description with parameters substituted and every value checked
        against its type's declarations (an :class:`ExperimentFileError` otherwise)."""
        doc = self._doc
        plan: dict[str, Any] = {"globals": [], "resources": [], "conditions": []}
        for rtype, attrs in doc.get("globals", {}).items():
            rclass = self._type(registry, rtype, "globals", rtype)
            for name, raw in attrs.items():
                value = self._attribute(rclass, name, _substitute(raw, params), ("globals", rtype, name))
                plan["globals"].append((rclass.rtype(), name, value))
        for label, res in doc["resources"].items():
            rclass = self._type(registry, res["type"], "resources", label, "type")
            attrs = {name: self._attribute(rclass, name, _substitute(raw, params),
                                           ("resources", label, "attributes", name))
                     for name, raw in res.get("attributes", {}).items()}
            declared = {t.name for t in rclass.get_traces()}
            for i, trace in enumerate(res.get("traces", [])):
                if trace not in declared:
                    raise self._error(f"{rclass.rtype()} has no trace {trace!r} (declared: "
                                      f"{', '.join(sorted(declared)) or 'none'})", "resources", label, "traces", i)
            plan["resources"].append((label, rclass.rtype(), res.get("guid"), attrs, res.get("traces", [])))
        for i, cond in enumerate(doc.get("conditions", [])):
            time = _substitute(cond.get("time"), params)
            try:
                delay_seconds(time)
            except NepiError as exc:
                raise self._error(str(exc), "conditions", i, "time") from None
            plan["conditions"].append((cond["resources"], ResourceAction[cond["action"]], cond["after"],
                                       ResourceState[cond["state"]], time))
        return plan

    def _type(self, registry: ResourceRegistry, rtype: str, *where: str | int) -> type[ResourceManager]:
        try:
            return registry.get_resource_type(rtype)
        except NepiError as exc:
            raise self._error(str(exc).strip("\"'"), *where) from None

    def _attribute(self, rclass: type[ResourceManager], name: str, value: Any, where: tuple[str | int, ...]) -> Any:
        try:
            attr = rclass.get_attribute(name)
            if attr.has_flag(Flags.ReadOnly):
                raise self._error(f"attribute {name!r} of {rclass.rtype()} is read-only", *where)
            return attr.validate(value)
        except ExperimentFileError:
            raise
        except NepiError as exc:
            raise self._error(str(exc).strip("\"'"), *where) from None

    def check(self, registry: ResourceRegistry, params: Mapping[str, Any] | None = None) -> None:
        """Check the file against the resource types of ``registry`` (as :meth:`build` does first)."""
        self._plan(registry, self.resolve(params))

    def build(self, ec: ExperimentController, params: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Register the experiment into ``ec``; return each label's guid.

        Everything is checked first (parameter values, types, attributes and
        their values, traces, times, guids free in ``ec``): an
        :class:`ExperimentFileError` then, and nothing is registered.
        Resources with a guid are registered first, the others then in file
        order; then globals, attributes, traces, connections, conditions.  The
        parameter values used are kept in the run's hash, field ``params`` (JSON).
        """
        values = self.resolve(params)
        plan = self._plan(ec.registry, values)
        wanted = [(label, guid) for label, _, guid, _, _ in plan["resources"] if guid is not None]
        taken = set(g for _, g in wanted) - set(ec.store.missing([g for _, g in wanted]))
        for label, guid in wanted:
            if guid in taken:
                raise self._error(f"guid {guid} is already registered in run {ec.run_id}", "resources", label, "guid")
        if values:  # the point of a sweep this run is, for whoever lists the runs
            ec.store.set_run_field("params", json.dumps(values, sort_keys=True))
        for rtype, name, value in plan["globals"]:
            ec.set_global(rtype, name, value)
        guids: dict[str, int] = {}
        ordered = sorted(plan["resources"], key=lambda r: r[2] is None)  # stable: file order within each
        for label, rtype, guid, _, _ in ordered:
            guids[label] = g = ec.register_resource(rtype, guid)
            written = self._doc["resources"][label]["type"]  # a default label under NEPI's name is one too
            if label not in (default_label(rtype, g), default_label(written, g)):
                ec.store.set_fields(g, {"label": label})
        for label, _, _, attrs, traces in plan["resources"]:
            for name, value in attrs.items():
                ec.set(guids[label], name, value)
            for trace in traces:
                ec.enable_trace(guids[label], trace)
        for a, b in self._doc.get("connections", []):
            ec.register_connection(guids[a], guids[b])
        for targets, action, after, state, time in plan["conditions"]:
            ec.register_condition([guids[t] for t in targets], action, [guids[a] for a in after], state, time)
        return guids


def parse_experiment(text: str, fmt: str = "yaml", source: str | None = None) -> Experiment:
    """Return the Experiment a YAML or JSON text describes, else raise ExperimentFileError."""
    return Experiment.from_document(parse_text(text, fmt, source), source)


def read_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Read and check an experiment file (``.yaml``, ``.yml``, ``.json``, or NEPI 3.1's ``.xml``).

    Raises :class:`ExperimentFileError` naming the field (its JSON path) and
    why: an unreadable or too large file, bad YAML/JSON, a schema violation,
    an undeclared parameter or label.  Types and attributes are checked by
    :meth:`Experiment.build` (or :meth:`Experiment.check`), against the
    controller's resource types.
    """
    source = os.fspath(path)
    fmt = file_format(source)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ExperimentFileError("$", f"cannot read the file: {exc.strerror or exc}", source) from None
    if len(data) > MAX_FILE_BYTES:
        raise ExperimentFileError("$", f"larger than {MAX_FILE_BYTES} bytes", source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExperimentFileError("$", f"not UTF-8 text (byte {exc.start})", source) from None
    return parse_experiment(text, fmt, source)
