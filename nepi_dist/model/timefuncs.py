"""Dates and delays as NEPI writes them.

A date is either relative, ``<number><unit>`` with unit one of
``h m s ms us`` (``"0.5s"``, ``"2m"``), or absolute, the 20-digit
``YYYYmmddHHMMSSffffff`` form (local time, as in NEPI).  Everything here works
in float seconds since the epoch.
"""

from __future__ import annotations

import datetime
import math
import re
import time

from nepi_dist.errors import TimeFormatError, shown

_RELATIVE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(h|m|s|ms|us)$")
_ABSOLUTE = re.compile(r"^\d{20}$")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def delay_seconds(text: str | float | int | None) -> float:
    """Return a relative delay in seconds; ``None`` means no delay.

    Numbers are taken as seconds.  Raises :class:`TimeFormatError` for
    anything else, including negative values, absolute dates and delays that
    are not finite (``nan``, ``inf``, or digits too many for a float).
    """
    if text is None:
        return 0.0
    if isinstance(text, bool):
        raise TimeFormatError(f"not a delay: {shown(text)}")
    if isinstance(text, (int, float)):
        return _finite(float(_bounded(text)), text)
    if not isinstance(text, str):
        raise TimeFormatError(f"not a delay: {shown(text)}")
    m = _RELATIVE.fullmatch(text)
    if not m:
        raise TimeFormatError(
            f"malformed delay {shown(text)}: expected <number>(h|m|s|ms|us), e.g. '0.5s'"
        )
    return _finite(float(m.group(1)) * _UNIT[m.group(2)], text)


def _bounded(value: int | float) -> int | float:
    """Return ``value`` if it converts to a float (an int may be too large for one)."""
    try:
        float(value)
    except OverflowError:
        raise TimeFormatError(f"delay too large: {shown(value)}") from None
    return value


def _finite(seconds: float, given: object) -> float:
    """Return ``seconds`` when it is a finite, non-negative number of seconds."""
    if math.isnan(seconds) or seconds < 0:
        raise TimeFormatError(f"negative or not a number: {shown(given)}")
    if math.isinf(seconds):
        raise TimeFormatError(f"not finite: {shown(given)}")
    return seconds


def timeout_seconds(value: object) -> float | None:
    """Return a wait's timeout in seconds: ``None`` (no limit) or a finite number >= 0.

    Raises :class:`TimeFormatError` for anything else (a bool, a string, ``nan``,
    ``inf``, a negative number), before the caller changes anything.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TimeFormatError(f"a timeout is a number of seconds or None, not {shown(value)}")
    return _finite(float(_bounded(value)), value)


def absolute_date(text: str) -> float:
    """Return the epoch seconds of a 20-digit ``YYYYmmddHHMMSSffffff`` date."""
    if not isinstance(text, str) or not _ABSOLUTE.fullmatch(text):
        raise TimeFormatError(f"malformed absolute date {shown(text)}")
    try:
        dt = datetime.datetime.strptime(text, "%Y%m%d%H%M%S%f")
    except ValueError as exc:
        raise TimeFormatError(f"malformed absolute date {text!r}: {exc}") from None
    try:
        return dt.timestamp()  # local time: years near 1 or 9999 may not convert
    except (ValueError, OverflowError, OSError) as exc:
        raise TimeFormatError(f"absolute date {text!r} out of range: {exc}") from None


def due_in(date: str | float | int | None, now: float | None = None) -> float:
    """Return the seconds from ``now`` until ``date`` (relative or absolute), never < 0.

    A far date (year 9999) is a large but finite delay: what waits on it must
    cap each sleep (see :class:`~nepi_dist.engine.scheduler.LocalScheduler`).
    """
    if isinstance(date, str) and _ABSOLUTE.fullmatch(date):
        now = time.time() if now is None else now
        return max(0.0, absolute_date(date) - now)
    return delay_seconds(date)


def format_date(ts: float) -> str:
    """Return the 20-digit absolute form of epoch seconds ``ts`` (local time)."""
    return datetime.datetime.fromtimestamp(ts).strftime("%Y%m%d%H%M%S%f")


# -- NEPI's datetime helpers (nepi.util.timefuncs), for scripts that time themselves ----------


def tnow() -> datetime.datetime:
    """Return the current local time as a datetime (NEPI's ``tnow``)."""
    return datetime.datetime.now()


def tdiff(date1: datetime.datetime, date2: datetime.datetime) -> datetime.timedelta:
    """Return ``date1 - date2`` (NEPI's ``tdiff``)."""
    return date1 - date2


def tdiffsec(date1: datetime.datetime, date2: datetime.datetime) -> float:
    """Return ``date1 - date2`` in seconds (NEPI's ``tdiffsec``)."""
    return (date1 - date2).total_seconds()


def tsformat(date: datetime.datetime | None = None) -> str:
    """Return ``date`` (default: now) in the 20-digit ``YYYYmmddHHMMSSffffff`` form."""
    return (date or tnow()).strftime("%Y%m%d%H%M%S%f")


def stformat(sdate: str) -> datetime.datetime:
    """Return the datetime of a 20-digit ``YYYYmmddHHMMSSffffff`` date; TimeFormatError if malformed."""
    return datetime.datetime.fromtimestamp(absolute_date(sdate))


def stabsformat(sdate: str | None, dbase: datetime.datetime | None = None) -> datetime.datetime:
    """Return the datetime a NEPI date names: now when empty, an absolute 20-digit date,
    or ``dbase`` (default now) plus a relative delay (``"5s"``, ``"2m"``)."""
    if not sdate:
        return tnow()
    if isinstance(sdate, str) and _ABSOLUTE.fullmatch(sdate):
        return stformat(sdate)
    return (dbase or tnow()) + datetime.timedelta(seconds=delay_seconds(sdate))
