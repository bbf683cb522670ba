"""Redis clients that ride out a Redis restart or stall, up to one bound.

Every Redis client of nepi_dist (the controller's, each worker's, the
command line's) comes from :func:`redis_client`.  A Redis that restarts
(from its append-only file) refuses connections, then answers ``LOADING``
for a while; a Redis that is paused (SIGSTOP, a long fork, a saturated host)
answers nothing at all.  Both are ridden out:

* a command waits for its reply up to the *outage bound*
  (``$NEPI_DIST_REDIS_OUTAGE`` seconds, default 60): a stalled Redis runs the
  command once when it resumes, and the command is never sent twice;
* a refused, reset or loading connection is retried with jittered
  exponential backoff (capped at 1 s) until the bound has passed since the
  command was first sent.

A command may still reach Redis twice (the connection broke after Redis ran
it, before the reply arrived): every script of the store is written to be
idempotent under such a replay (see :mod:`nepi_dist.engine.lua`).  Past the
bound, the redis-py error propagates; the controller's API turns it into
:class:`~nepi_dist.errors.RedisUnavailableError`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from nepi_dist.engine.tls import check_url, tls_refusal
from nepi_dist.errors import (
    NepiError,
    RedisAuthError,
    RedisConfigError,
    RedisTLSError,
    RedisUnavailableError,
    StoreError,
)

OUTAGE_ENV = "NEPI_DIST_REDIS_OUTAGE"
DEFAULT_OUTAGE = 60.0
#: Seconds a new TCP connection may take before it counts as a failure (and is retried).
CONNECT_TIMEOUT = 5.0
#: Connections one client's pool may open: every thread holds its own (see Store.client).
POOL_SIZE = 4096

T = TypeVar("T")


def outage_bound() -> float:
    """Return the seconds a Redis outage is ridden out (``$NEPI_DIST_REDIS_OUTAGE``)."""
    raw = os.environ.get(OUTAGE_ENV, "")
    try:
        bound = float(raw) if raw else DEFAULT_OUTAGE
    except ValueError:
        raise RedisConfigError(f"{OUTAGE_ENV}={raw!r} is not a number of seconds") from None
    if bound <= 0:
        raise RedisConfigError(f"{OUTAGE_ENV}={raw!r} must be positive")
    return bound


class OutageRetry(Retry):
    """Retry a failed command until ``bound`` seconds have passed since it was first sent.

    redis-py's own policy counts attempts (10 by default, each waiting up to
    5 s for a reply, then sending the command again), so how long it waits
    depends on how the connection fails, and a stalled Redis gets the same
    command several times.  Here the socket waits for a reply as long as the
    bound itself, so a reply that does not come ends the call: a command is
    sent again only after a refused, reset or loading connection.
    """

    def __init__(self, bound: float) -> None:
        super().__init__(
            ExponentialWithJitterBackoff(cap=1.0, base=0.05),
            retries=1_000_000,
            supported_errors=(redis.ConnectionError, redis.TimeoutError, socket.timeout),
        )
        self.bound = bound

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        self._backoff.reset()
        failures = 0
        deadline = time.monotonic() + self.bound
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                if permanent_failure(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(self._backoff.compute(failures), left))


def permanent_failure(error: BaseException) -> bool:
    """Return True when ``error`` is a refusal that retrying cannot cure (TLS, a login)."""
    return isinstance(error, redis.AuthenticationError) or tls_refusal(error) is not None


def typed_error(error: redis.RedisError) -> NepiError:
    """Return the nepi_dist error a redis-py ``error`` reaches the user as.

    A refused TLS handshake is a :class:`RedisTLSError`, a refused login or
    an ACL refusal (``NOPERM``) a :class:`RedisAuthError`, any other
    connection error or timeout a :class:`RedisUnavailableError` (it lasted
    past the outage bound), anything else a :class:`StoreError`.
    """
    refusal = tls_refusal(error)
    if refusal is not None:
        return RedisTLSError(
            f"the TLS handshake with Redis was refused: {refusal}. Check ssl_ca_certs (the CA that signed the "
            "server's certificate), the host name in the URL (it must be one the certificate names), and "
            "ssl_certfile/ssl_keyfile when the server asks for a client certificate"
        )
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.NoPermissionError)):
        return RedisAuthError(f"Redis refused this client: {error}")
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return RedisUnavailableError(
            f"Redis did not answer within {outage_bound():g}s (the bound ${OUTAGE_ENV} sets): {error}"
        )
    return StoreError(f"Redis refused a command: {error}")


def redis_client(url: str, *, bound: float | None = None, decode_responses: bool = True) -> redis.Redis:
    """Return a client on ``url`` that rides out restarts and stalls up to ``bound`` seconds.

    A ``rediss://`` URL gives TLS with the certificates its query names
    (:mod:`nepi_dist.engine.tls`); settings that cannot work raise
    RedisTLSError here, before anything connects.
    """
    check_url(url)
    bound = outage_bound() if bound is None else bound
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_timeout=bound,
        socket_connect_timeout=min(CONNECT_TIMEOUT, bound),
        socket_keepalive=True,
        retry=OutageRetry(bound),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        max_connections=POOL_SIZE,
        health_check_interval=0,
    )


def durability_warning(client: redis.Redis) -> str | None:
    """Return what a crash of this Redis would cost a run, None when it costs nothing.

    No append-only file: a restart loses every run.  ``appendfsync`` other
    than ``always``: a crash of the Redis *host* loses the last ~1 s of
    acknowledged writes, and the actions that ran in it run again (README,
    Reliability).  A process kill loses nothing either way.  A warning, not a
    refusal: a throw-away Redis is a fine choice for a test run.
    """
    if not int(client.info("persistence").get("aof_enabled", 0)):
        return "Redis keeps no append-only file: a restart of it loses every run it holds"
    try:
        fsync = str(client.config_get("appendfsync").get("appendfsync", ""))
    except redis.ResponseError:  # CONFIG not permitted (a managed Redis, an ACL)
        return None
    if fsync != "always":
        return (f"Redis runs with appendfsync {fsync}: a crash of its host loses up to ~1 s of writes "
                "and the actions of that second run again; use appendfsync always for exactly-once")
    return None


def check_no_eviction(client: redis.Redis) -> None:
    """Refuse a Redis that may evict keys: it would drop a run's state without a word.

    Read from ``INFO memory``, which needs no CONFIG permission.
    """
    policy = str(client.info("memory").get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise RedisConfigError(
            f"Redis at {client.connection_pool.connection_kwargs.get('host')} has maxmemory-policy "
            f"{policy}: it may evict a run's keys and lose its state silently. "
            "Set `maxmemory-policy noeviction` (redis.conf or CONFIG SET)."
        )
