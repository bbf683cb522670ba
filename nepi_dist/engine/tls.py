"""TLS to Redis: one ``rediss://`` URL configures the broker and every store client alike.

The certificates are given the way redis-py and kombu read them, in the URL's
query::

    rediss://host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/nepi-dist/ca.pem
        &ssl_certfile=/etc/nepi-dist/client.pem&ssl_keyfile=/etc/nepi-dist/client.key

redis-py (the store, the controller, the command line) reads that query itself.
kombu (the broker) does not when the transport is ours
(:class:`~nepi_dist.engine.celery_app.RedisTransport`, which every nepi_dist app
uses for ``redis://`` and ``rediss://`` alike), and with its own transport it
falls back to ``CERT_NONE`` -- no verification at all -- when the query names no
``ssl_cert_reqs``.  :func:`broker_ssl` gives kombu the same options redis-py
takes, with the secure defaults of redis-py: the server's certificate is
verified (``ssl_cert_reqs=required``) and its name checked against the URL's
host (``ssl_check_hostname=true``).  Turning either off is explicit in the URL
and logged once per process.

:func:`check_url` refuses a TLS setting that cannot work (an unknown
``ssl_cert_reqs``, a certificate file that is not there) before anything
connects; :func:`tls_refusal` tells a handshake the server or the client
refused (not worth retrying) from a Redis that is merely away.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any
from urllib.parse import parse_qs, urlparse

from nepi_dist.errors import RedisTLSError

log = logging.getLogger("nepi_dist.engine.tls")

#: What ``ssl_cert_reqs`` may say, and the ssl constant each means.
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
#: The query keys naming a file to read.
FILE_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: Reasons (``ssl.SSLError.reason``) and message fragments of a handshake that will fail again.
_REFUSALS = (
    "CERTIFICATE_VERIFY_FAILED", "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
    "WRONG_VERSION_NUMBER", "HANDSHAKE_FAILURE", "CERTIFICATE_UNKNOWN", "NO_SHARED_CIPHER",
    "UNSUPPORTED_PROTOCOL", "PEM_LIB", "KEY_VALUES_MISMATCH", "NO_START_LINE",
)
_warned: set[str] = set()


def is_tls(url: str) -> bool:
    """Return True when ``url`` reaches Redis over TLS (``rediss://``)."""
    return urlparse(url).scheme == "rediss"


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}


def check_url(url: str) -> None:
    """Refuse TLS settings in ``url`` that cannot work, before anything connects.

    Raises RedisTLSError for an ``ssl_cert_reqs`` other than
    required/optional/none, an ``ssl_check_hostname`` other than true/false,
    TLS options on a ``redis://`` URL (they would be ignored: the link would
    be plain text), or a certificate or key file that cannot be read.
    """
    query = _query(url)
    given = [k for k in query if k.startswith("ssl_")]
    if not is_tls(url):
        if given:
            raise RedisTLSError(
                f"{', '.join(given)} given on a {urlparse(url).scheme}:// URL: TLS needs rediss://"
            )
        return
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise RedisTLSError(f"ssl_cert_reqs={query['ssl_cert_reqs']!r}: give required, optional or none")
    check = query.get("ssl_check_hostname", "true").lower()
    if check not in ("true", "false", "1", "0", "yes", "no"):
        raise RedisTLSError(f"ssl_check_hostname={query['ssl_check_hostname']!r}: give true or false")
    for key in FILE_KEYS:
        path = query.get(key)
        if path is not None and not os.access(path, os.R_OK):
            raise RedisTLSError(f"{key}={path}: no such file, or not readable by this process")
    if "ssl_keyfile" in query and "ssl_certfile" not in query:
        raise RedisTLSError("ssl_keyfile given without ssl_certfile")
    weak = []
    if reqs != "required":
        weak.append(f"ssl_cert_reqs={reqs}: the server's certificate is not verified")
    if check in ("false", "0", "no"):
        weak.append("ssl_check_hostname=false: the server's certificate may name any host")
    for warning in weak:
        if warning not in _warned:
            _warned.add(warning)
            log.warning("TLS to Redis weakened by the URL: %s", warning)


def broker_ssl(url: str) -> dict[str, Any] | None:
    """Return kombu's ``broker_use_ssl`` for ``url``: None for ``redis://``, else redis-py's SSL options.

    The same options redis-py reads from the query, with its defaults
    (verify the certificate, check the host name), so that the broker and
    the store connect the same way.
    """
    if not is_tls(url):
        return None
    check_url(url)
    query = _query(url)
    options: dict[str, Any] = {
        "ssl_cert_reqs": CERT_REQS[query.get("ssl_cert_reqs", "required").lower()],
        "ssl_check_hostname": query.get("ssl_check_hostname", "true").lower() in ("true", "1", "yes"),
    }
    for key in FILE_KEYS:
        if key in query:
            options[key] = query[key]
    return options


def tls_refusal(error: BaseException) -> str | None:
    """Return why a TLS handshake was refused when ``error`` (or what caused it) is one, else None.

    A refused handshake (an unknown CA, a name mismatch, no client
    certificate, a plain-text server) fails the same way every time: it is
    not an outage to ride out.  redis-py wraps the ``ssl`` error in a
    ``ConnectionError`` whose message keeps its text; the chain of causes is
    followed too.
    """
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            reason = str(getattr(seen, "reason", "") or "")
            if any(r in reason for r in _REFUSALS):
                return str(seen)
        text = str(seen)
        if "SSL" in text and any(r in text.upper() for r in _REFUSALS):
            return text
        seen = seen.__cause__ or seen.__context__
    return None
