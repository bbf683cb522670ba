"""Keeping secrets out of logs, error texts and snapshots.

A value of an attribute flagged :attr:`~nepi_dist.model.attribute.Flags.Credential`
(an SSH key path, a password) is a secret.  Every secret this process has
read or written through an RM is remembered (:func:`remember`, called by
:meth:`ResourceManager.get` and ``set``); from then on:

* every log record of the process has it replaced by :data:`MASK`, in its
  message and in its formatted traceback (a log record factory, installed
  once: it covers Celery's and paramiko's records as well as nepi_dist's);
* :func:`redact` does the same to a text before it is stored where others
  read it (an RM's ``err``, a tracked task's traceback).

A secret can only reach an error message once code here read it, so this
process knows every secret its messages could hold.  Short values (under 4
characters) are not remembered: masking them would garble every message.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

#: What a secret is replaced by.
MASK = "<redacted>"
#: Values shorter than this are not masked (a port, "yes").
MIN_LENGTH = 4

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def remember(value: Any) -> None:
    """Note ``value`` (a Credential attribute's) as a secret of this process."""
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
    _install()


def redact(text: str) -> str:
    """Return ``text`` with every secret of this process replaced by :data:`MASK`."""
    if not _secrets or not isinstance(text, str):
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # a secret inside another one: the longer first
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _install() -> None:
    """Wrap the log record factory once, so that every record is redacted when it is made."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets:
            _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is the logging module's to report, not ours
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text)
