"""Attributes declared as metadata on resource types.

An :class:`Attribute` describes one configurable value of a resource type:
its type, flags, default, allowed set or range, and an optional set hook.
Values themselves live in the run's store, never on the declaration.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable, Sequence
from typing import Any

from nepi_dist.errors import AttributeValueError, UnsupportedAttributeError, shown

#: An Integer attribute holds a signed 64-bit value: what JSON, Redis and the tools
#: reading it agree on (a larger int may not even convert to text: 4,300 digits).
INT_LIMIT = 2**63


class Types(enum.StrEnum):
    """The value types an attribute may declare."""

    String = "STRING"
    Bool = "BOOL"
    Enumerate = "ENUM"
    Double = "DOUBLE"
    Integer = "INTEGER"


class Flags(enum.IntFlag):
    """How an attribute may be used."""

    NoFlags = 0
    #: The user can never set it.
    ReadOnly = 1 << 0
    #: The user cannot set it once the resource was deployed.
    ExecReadOnly = 1 << 1
    #: A secret (password, key): never logged.
    Credential = 1 << 2
    #: Usable to filter resources at discovery.
    Filter = 1 << 3
    #: Marks a design-time only attribute (kept for NEPI compatibility).
    Design = 1 << 4
    #: A shell command run on the host as given: its value is a program, never quoted.  Every
    #: other value that reaches a host's shell is quoted (README, Security).
    Command = 1 << 5


SetHook = Callable[[Any, Any], Any]
#: Turns a value as users write it into the attribute's own form before it is checked
#: (e.g. NEPI's tcpdump ``w``: ``True`` means "the default file name"); raises
#: :class:`AttributeValueError` to refuse it.
Coerce = Callable[[Any], Any]


class Attribute:
    """One declared attribute of a resource type.

    ``set_hook(old, new)`` may transform a value; it runs where the set
    happens and returns the value to store.

    ``aliases`` are other names the same attribute is found by (NEPI's name and
    ours): declared once, stored once, under ``name``.  ``unsupported`` says why
    a value other than the default (or None/False) cannot work here: setting
    one raises :class:`UnsupportedAttributeError` naming the attribute.
    """

    def __init__(
        self,
        name: str,
        help: str = "",
        type: Types = Types.String,
        flags: Flags | int = Flags.NoFlags,
        default: Any = None,
        allowed: Sequence[Any] | None = None,
        range: tuple[float | None, float | None] | None = None,
        set_hook: SetHook | None = None,
        aliases: Sequence[str] = (),
        coerce: Coerce | None = None,
        unsupported: str | None = None,
    ) -> None:
        self.name = name
        self.aliases = tuple(aliases)
        self.coerce = coerce
        self.unsupported = unsupported
        self.help = help
        self.type = Types(type)
        self.flags = Flags(flags or 0)
        self.allowed = list(allowed) if allowed is not None else None
        self.range = range
        self.set_hook = set_hook
        if self.type is Types.Enumerate and not self.allowed:
            raise AttributeValueError(f"Enumerate attribute {name!r} needs allowed values")
        self.default: Any = None
        self.default = self.validate(default) if default is not None else None

    def has_flag(self, flag: Flags) -> bool:
        """Return True when ``flag`` is set on this attribute."""
        return bool(self.flags & flag)

    @property
    def is_credential(self) -> bool:
        return self.has_flag(Flags.Credential)

    def validate(self, value: Any) -> Any:
        """Return ``value`` normalised for this attribute's type, or raise.

        ``None`` clears a value.  Strings are accepted for numbers and Bool
        (as NEPI's description files write them) when they parse exactly.
        """
        if value is None:
            return None
        if self.coerce is not None:
            value = self.coerce(value)
            if value is None:
                return None
        if not self.is_credential:
            return self._validate(value)
        try:
            return self._validate(value)
        except AttributeValueError:
            raise AttributeValueError(
                f"attribute {self.name!r}: not a valid {self.type.name} (a credential: its value is not shown)"
            ) from None

    def _validate(self, value: Any) -> Any:
        t = self.type
        try:
            if t is Types.Bool:
                value = self._as_bool(value)
            elif t is Types.Integer:
                value = self._as_int(value)
            elif t is Types.Double:
                value = self._as_float(value)
            elif t is Types.String:
                if not isinstance(value, str):
                    raise AttributeValueError(f"expects a string, got {type(value).__name__}")
            elif t is Types.Enumerate:
                pass
        except AttributeValueError as exc:
            raise AttributeValueError(f"attribute {self.name!r}: {exc}") from None
        if self.allowed is not None and value not in self.allowed:
            raise AttributeValueError(
                f"attribute {self.name!r}: {shown(value)} is not one of {self.allowed!r}"
            )
        if self.range is not None and t in (Types.Integer, Types.Double):
            low, high = self.range
            if (low is not None and value < low) or (high is not None and value > high):
                raise AttributeValueError(
                    f"attribute {self.name!r}: {shown(value)} outside range [{low}, {high}]"
                )
        if self.unsupported is not None and value is not False and value != self.default:
            raise UnsupportedAttributeError(
                f"attribute {self.name!r} cannot work here: {self.unsupported}"
            )
        return value

    @staticmethod
    def _as_bool(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise AttributeValueError(f"expects a Bool, got {shown(value)}")

    @staticmethod
    def _as_int(value: Any) -> int:
        if isinstance(value, bool):
            raise AttributeValueError(f"expects an Integer, got {value!r}")
        number: int | None = None
        if isinstance(value, int):
            number = int(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):  # not an integer, or more digits than Python converts
                number = int(value.strip())
        if number is None:
            raise AttributeValueError(f"expects an Integer, got {shown(value)}")
        if not -INT_LIMIT <= number < INT_LIMIT:
            raise AttributeValueError(f"expects a 64-bit Integer, got {shown(value)}")
        return number

    @staticmethod
    def _as_float(value: Any) -> float:
        if isinstance(value, bool):
            raise AttributeValueError(f"expects a Double, got {value!r}")
        number: float | None = None
        if isinstance(value, (int, float)):
            with contextlib.suppress(OverflowError):  # an int beyond any float
                number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value.strip())
        if number is None:
            raise AttributeValueError(f"expects a Double, got {shown(value)}")
        if not math.isfinite(number):  # JSON has no nan or inf
            raise AttributeValueError(f"expects a finite Double, got {shown(value)}")
        return number

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this attribute is found by: its own first, then its aliases."""
        return (self.name, *self.aliases)

    def __repr__(self) -> str:
        return f"Attribute({self.name!r}, type={self.type.name}, default={self.default!r})"
