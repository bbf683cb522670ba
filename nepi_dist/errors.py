"""The one error hierarchy of nepi_dist.

Every error the library raises on purpose is a :class:`NepiError`.  Errors
about bad user input also derive from the matching built-in class
(``KeyError``, ``ValueError``, ``TypeError``) so generic handlers still work.
"""

from __future__ import annotations


class NepiError(Exception):
    """Raised when nepi_dist refuses or fails an operation (base class)."""


class UnknownResourceTypeError(NepiError, KeyError):
    """Raised when a resource type name is not registered."""


class UnknownGuidError(NepiError, KeyError):
    """Raised when a guid names no resource of this run."""


class ArgumentTypeError(NepiError, TypeError):
    """Raised when an argument of a public call has the wrong type (a name that is
    not a str, a flag that is not a bool, a callback that is not callable, ...)."""


class ArgumentValueError(NepiError, ValueError):
    """Raised when an argument has the right type but is outside its bounds or
    allowed values (a negative block, an unknown trace attribute, a bad Celery setting)."""


class GuidTypeError(UnknownGuidError, ArgumentTypeError):
    """Raised when a guid is not an int (a bool, a float, a str, None, ...), or a
    list of guids is neither an int nor an iterable of ints."""


class GuidRangeError(UnknownGuidError, ArgumentValueError):
    """Raised when a guid is outside [1, 2**53), the integers Redis' Lua scripts
    hold exactly, or a run's next automatic guid would leave that range."""


class DuplicateGuidError(NepiError, ValueError):
    """Raised when a guid asked for at registration is already taken."""


class UnknownAttributeError(NepiError, KeyError):
    """Raised when an attribute name is not declared by the resource type."""


class AttributeValueError(NepiError, ValueError):
    """Raised when a value breaks its attribute's type, range or allowed set."""


class UnsupportedAttributeError(AttributeValueError):
    """Raised when an attribute NEPI declared is set to a value nepi_dist cannot honour on
    this platform (an hpcbench option iperf3 has no equivalent for, X11 forwarding, ...)."""


class ReadOnlyAttributeError(NepiError, PermissionError):
    """Raised when a ReadOnly attribute is set, or an ExecReadOnly one after deploy."""


class TimeFormatError(NepiError, ValueError):
    """Raised when a date, delay or timeout is malformed, negative, not finite, or a
    date out of the range the platform's clock can convert."""


class ConditionError(NepiError, ValueError):
    """Raised when a condition names an unknown action, state or guid."""


class UnknownTraceError(NepiError, KeyError):
    """Raised when a trace name is not declared by the resource type."""


class ActionError(NepiError, ValueError):
    """Raised when a scheduled callable is not an action a worker may run."""


class ActionFailedError(NepiError, RuntimeError):
    """Raised by a worker's task when the RM action it ran failed, so that Celery and Flower show
    the task as FAILURE with the reason (the RM is FAILED in the run already)."""


class ControllerClosedError(NepiError, RuntimeError):
    """Raised when a change is asked of a controller that was shut down."""


class ExperimentIdError(NepiError, ValueError):
    """Raised when an exp_id or run_id holds characters unsafe in a key."""


class WaitTimeoutError(NepiError, TimeoutError):
    """Raised when a wait with a timeout ends before its resources reached the state."""


class ResourceFailedError(NepiError, RuntimeError):
    """Raised inside an action that waits on a critical resource which has FAILED."""


class ECFailureError(NepiError, RuntimeError):
    """Raised when the controller itself failed and cannot exit gracefully."""


class NoWorkerError(NepiError, RuntimeError):
    """Raised when no live worker serves the queue a resource's actions must go to."""


class RemoteReadError(NepiError, RuntimeError):
    """Raised when a read through another host's worker fails or gets no answer in time."""


class StoreError(NepiError, RuntimeError):
    """Raised when Redis, the store, refuses a command (e.g. out of memory, a read-only replica)."""


class RedisUnavailableError(StoreError, ConnectionError):
    """Raised when Redis stayed unreachable or stalled past the outage bound (``$NEPI_DIST_REDIS_OUTAGE``)."""


class RedisConfigError(NepiError, RuntimeError):
    """Raised when the Redis given could lose a run's state (e.g. a maxmemory-policy that evicts keys)."""


class RedisTLSError(StoreError, ConnectionError):
    """Raised when TLS to Redis cannot work: the server's certificate is not signed by the CA
    given (``ssl_ca_certs``) or names another host, the server refused this client's
    certificate (or its lack of one), or the URL's TLS settings are malformed."""


class SigningKeyError(NepiError, ValueError):
    """Raised when ``$NEPI_DIST_SIGNING_KEY`` is set to a key too short to sign actions with."""


class RedisAuthError(StoreError, PermissionError):
    """Raised when Redis refuses this client's user or password, or its ACL forbids a command,
    a key or a channel the operation needs (see README, Security)."""


class ExperimentFileError(NepiError, ValueError):
    """Raised when an experiment file (or a parameter value given for it) is malformed, breaks
    its schema, or names a type, attribute, trace, label or parameter that does not fit:
    ``path`` is the JSON path of the field (``$.resources.ping.attributes.count``), ``reason``
    says why, and nothing was registered."""

    def __init__(self, path: str, reason: str, source: str | None = None) -> None:
        self.path = path
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {reason}")


class RunnerError(NepiError, ValueError):
    """Raised when an ExperimentRunner is given no way to stop (no ``max_runs`` and no metric),
    bounds that contradict each other, or a convergence rule without samples; and when a run's
    metric cannot be read (``nepi-dist run --until-converged --metric``: no such label, no number
    in the trace, nothing finished)."""


def shown(value: object, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for an error message.

    Never raises: an int of more than 4,300 digits has no ``repr`` (Python's
    conversion limit), and a user's object may have a broken one.
    """
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # a message must not fail on the value it describes
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
