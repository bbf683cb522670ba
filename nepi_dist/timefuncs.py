"""Dates and delays as NEPI writes them.

A date is either relative, ``<number><unit>`` with unit one of
``h m s ms us`` (``"0.5s"``, ``"2m"``), or absolute, the 20-digit
``YYYYmmddHHMMSSffffff`` form (local time, as in NEPI).  Everything here works
in float seconds since the epoch.
"""

from __future__ import annotations

import datetime
import re
import time

from .errors import TimeFormatError

_RELATIVE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(h|m|s|ms|us)$")
_ABSOLUTE = re.compile(r"^\d{20}$")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def delay_seconds(text: str | float | int | None) -> float:
    """Return a relative delay in seconds; ``None`` means no delay.

    Numbers are taken as seconds.  Raises :class:`TimeFormatError` for
    anything else, including negative values and absolute dates.
    """
    if text is None:
        return 0.0
    if isinstance(text, bool):
        raise TimeFormatError(f"not a delay: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise TimeFormatError(f"negative delay: {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise TimeFormatError(f"not a delay: {text!r}")
    m = _RELATIVE.match(text)
    if not m:
        raise TimeFormatError(
            f"malformed delay {text!r}: expected <number>(h|m|s|ms|us), e.g. '0.5s'"
        )
    return float(m.group(1)) * _UNIT[m.group(2)]


def absolute_date(text: str) -> float:
    """Return the epoch seconds of a 20-digit ``YYYYmmddHHMMSSffffff`` date."""
    if not _ABSOLUTE.match(text):
        raise TimeFormatError(f"malformed absolute date {text!r}")
    try:
        dt = datetime.datetime.strptime(text, "%Y%m%d%H%M%S%f")
    except ValueError as exc:
        raise TimeFormatError(f"malformed absolute date {text!r}: {exc}") from None
    return dt.timestamp()


def due_in(date: str | float | int | None, now: float | None = None) -> float:
    """Return the seconds from ``now`` until ``date`` (relative or absolute), never < 0."""
    if isinstance(date, str) and _ABSOLUTE.match(date):
        now = time.time() if now is None else now
        return max(0.0, absolute_date(date) - now)
    return delay_seconds(date)


def format_date(ts: float) -> str:
    """Return the 20-digit absolute form of epoch seconds ``ts`` (local time)."""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y%m%d%H%M%S%f")
