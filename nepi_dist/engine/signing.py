"""Signed actions: an HMAC-SHA256 over every message's headers and body, checked before anything runs.

Whoever can write to the broker's queues can make a worker run commands on
its host.  With a shared secret in ``$NEPI_DIST_SIGNING_KEY`` (the same in
every controller and worker), every message nepi_dist publishes carries a
signature over, in canonical JSON (sorted keys, no spaces, UTF-8):

* the headers that say what runs and when: the task name, its id, ETA,
  expiry, retries, time limits, group/root/parent ids;
* the queue it was published to (``nepi_q``): a message moved to another
  host's queue would run there;
* when it was signed (``nepi_ts``) and a random nonce (``nepi_n``);
* the body: args, kwargs and the embedded callbacks, chain and chord.

Celery's own ``auth`` serializer signs the body only; the task name, id and
ETA travel unsigned.  A worker with the key runs a message only once
:func:`check` found it signed with the key, for the queue it came from,
and not done before (its nonce is in the run's ``P:seen`` set once it ran:
a delivery again after a worker died is not a replay, it never finished).
Anything else is *refused*: logged, recorded in the run's event stream
when the message names a run that exists (:func:`record_refusal`), and
acknowledged without running anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any

import redis

from nepi_dist.engine.keys import Keys
from nepi_dist.errors import ExperimentIdError, SigningKeyError

SIGNING_KEY_ENV = "NEPI_DIST_SIGNING_KEY"
#: Header names of the signature and of what it adds to the message.
SIG, TS, NONCE, QUEUE = "nepi_sig", "nepi_ts", "nepi_n", "nepi_q"
#: The Celery headers the signature covers (protocol 2).
SIGNED_HEADERS = ("task", "id", "eta", "expires", "retries", "timelimit", "group", "root_id", "parent_id")
#: The body's embedded parts (protocol 2).
EMBED = ("callbacks", "errbacks", "chain", "chord")
#: The shortest secret accepted: an HMAC key guessable by brute force protects nothing.
MIN_KEY_LENGTH = 16
#: The event a refusal adds to a run's event stream has this guid (no RM has it).
REFUSED_GUID = -2

log = logging.getLogger("nepi_dist.engine.signing")


def signing_key(raw: str | None = None) -> bytes | None:
    """Return the signing key (``raw``, else ``$NEPI_DIST_SIGNING_KEY``), None when signing is off.

    Raises SigningKeyError for a key shorter than :data:`MIN_KEY_LENGTH` characters.
    """
    text = os.environ.get(SIGNING_KEY_ENV, "") if raw is None else raw
    if not text:
        return None
    if len(text) < MIN_KEY_LENGTH:
        raise SigningKeyError(f"{SIGNING_KEY_ENV} must be at least {MIN_KEY_LENGTH} characters (use 32 random ones)")
    return text.encode()


def _canonical(headers: dict[str, Any], args: Any, kwargs: Any, embed: dict[str, Any]) -> bytes:
    signed = {h: headers.get(h) for h in (*SIGNED_HEADERS, TS, NONCE, QUEUE)}
    body = {"args": args, "kwargs": kwargs, "embed": {k: embed.get(k) for k in EMBED}}
    return json.dumps({"h": signed, "b": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def _digest(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign(key: bytes, headers: dict[str, Any], body: tuple[Any, Any, dict[str, Any]], queue: str) -> None:
    """Add the signature (and its timestamp, nonce and queue) to a message's ``headers``, in place."""
    headers[TS] = round(time.time(), 3)
    headers[NONCE] = os.urandom(12).hex()
    headers[QUEUE] = queue
    args, kwargs, embed = body
    # The signature covers what the worker will decode: JSON's view of the values (tuples are lists).
    args, kwargs = json.loads(json.dumps([args, kwargs]))
    headers[SIG] = _digest(key, _canonical(headers, args, kwargs, embed or {}))


def check(key: bytes, request: Any, client: redis.Redis | None, exp_id: str, run_id: str) -> str | None:
    """Return why the message of Celery ``request`` must not run (unsigned, forged, replayed,
    moved to another queue), None when it is signed with ``key`` and new."""
    signature = getattr(request, SIG, None)
    if not isinstance(signature, str):
        return "unsigned"
    headers = {h: getattr(request, h, None) for h in (*SIGNED_HEADERS, TS, NONCE, QUEUE)}
    headers["task"] = getattr(request, "task", None) or getattr(request, "name", None)
    embed = {k: getattr(request, k, None) for k in EMBED}
    expected = _digest(key, _canonical(headers, list(request.args or []), dict(request.kwargs or {}), embed))
    if not hmac.compare_digest(signature, expected):
        return "forged"
    delivered = (getattr(request, "delivery_info", None) or {}).get("routing_key")
    if delivered is not None and delivered != headers[QUEUE]:
        return f"moved from queue {headers[QUEUE]} to {delivered}"
    if client is not None and client.sismember(Keys(exp_id, run_id).seen, str(headers[NONCE])):
        return "replayed"
    return None


def done(request: Any, client: redis.Redis, exp_id: str, run_id: str) -> None:
    """Note that the signed message of ``request`` ran to its end: the same message again is a replay."""
    nonce = getattr(request, NONCE, None)
    if isinstance(nonce, str):
        client.sadd(Keys(exp_id, run_id).seen, nonce)


def record_refusal(client: redis.Redis, exp_id: Any, run_id: Any, request: Any, reason: str) -> None:
    """Log a refused message, and add it to its run's event stream when that run exists."""
    name, task_id = getattr(request, "task", None) or getattr(request, "name", None), getattr(request, "id", None)
    log.error("REFUSED a %s message %s for run %s/%s: %s; nothing ran", name, task_id, exp_id, run_id, reason)
    try:
        keys = Keys(str(exp_id), str(run_id))
    except ExperimentIdError:
        return
    try:
        if client.exists(keys.run):
            now = client.time()
            client.xadd(keys.events, {"g": REFUSED_GUID, "s": 0, "t": f"{now[0] + now[1] / 1e6:.6f}",
                                      "refused": reason, "task": str(name), "id": str(task_id)})
    except redis.RedisError as exc:
        log.error("could not record the refusal in the run's events: %s", exc)
