"""The run's shared state in Redis: the one source of truth.

Every state change that belongs together is one Lua script (see
``_TRANSITION``): compare-and-set of the state, the timestamp from Redis'
own clock, wake-up of parked actions, the event appended to the run's
stream, the deployment-group count, and the critical-failure mark.

Actions that a script decides to run (woken waiters, group starts, due
timers) are written to the run's *outbox* and *pending* set in the same
script; the caller publishes them and then moves them from the outbox to
``sent``, where each payload stays until the action's claim.  If the caller
dies in between, a keeper publishes the outbox again; if a message is lost
on its way (a consumer or a Redis that dies between kombu's pop and its
record of the message as unacknowledged), a keeper sends it again from
``sent`` once it is a visibility timeout overdue.  The claim on the action
id makes a second delivery a no-op.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from nepi_dist.engine.heartbeat import HEARTBEAT_TTL
from nepi_dist.engine.keys import RUNS_KEY, Keys, worker_key
from nepi_dist.engine.lua import (
    CHECK,
    CLAIM,
    DROP,
    FINISH,
    GATE,
    JOIN_GROUP,
    LEASE,
    LOST,
    POP_TIMERS,
    REGISTER,
    SENT,
    TAKEOVER,
    TRANSITION,
    UNCLAIM,
)
from nepi_dist.errors import ControllerClosedError, UnknownGuidError


class FailureLevel:
    """The run's failure level (NEPI's values)."""

    OK = 1
    RM_FAILURE = 2
    EC_FAILURE = 3


#: Seconds a publisher's lease on the outbox lasts after its last cleared chunk.
OUTBOX_LEASE = 10
#: The holder of a claim given up by its worker (no heartbeat has this id: the next delivery takes over).
UNCLAIMED = "-"

Payload = dict[str, Any]
Dispatch = tuple[str, Payload, float]  # (action id, payload, due on the Redis clock)

class Transition:
    """What one state transition did."""

    __slots__ = ("changed", "dispatch", "previous")

    def __init__(self, changed: bool, previous: int, dispatch: list[Dispatch]) -> None:
        self.changed = changed
        self.previous = previous
        self.dispatch = dispatch


class CheckResult:
    """The outcome of evaluating one condition group."""

    __slots__ = ("index", "last", "now", "outcome")

    def __init__(self, outcome: str, index: int = 0, last: float = 0.0, now: float = 0.0):
        self.outcome = outcome  # ok | parked | failed | unknown
        self.index = index
        self.last = last
        self.now = now


class GateView:
    """What an action's gate reads in one round trip (see :meth:`Store.gate`)."""

    __slots__ = ("checks", "cond", "state")

    def __init__(self, state: int | None, cond: str | None, checks: list[CheckResult]) -> None:
        self.state = state  # None: no such RM
        self.cond = cond  # the RM's 'cond' field (JSON), None when it has none
        self.checks = checks  # one per condition of the action, in order ([] when not evaluated)


def _woken(flat: Sequence[Any]) -> list[Dispatch]:
    return [(flat[i], json.loads(flat[i + 1]), float(flat[i + 2])) for i in range(0, len(flat), 3)]


#: Per-thread Redis clients, one per connection pool (see :attr:`Store.client`).
_THREAD = threading.local()


class Store:
    """Reads and writes one run's keys.  Thread-safe: each thread has its own connection.

    After :meth:`freeze`, reads answer from a final snapshot and every write
    raises :class:`ControllerClosedError`.
    """

    def __init__(self, client: redis.Redis, exp_id: str, run_id: str) -> None:
        self._pool = client.connection_pool
        self.keys = Keys(exp_id, run_id)
        self.exp_id = exp_id
        self.run_id = run_id
        self._frozen: dict[str, Any] | None = None
        self._clock_offset: float | None = None
        reg = client.register_script
        self._transition = reg(TRANSITION)
        self._check = reg(CHECK)
        self._gate = reg(GATE)
        self._claim = reg(CLAIM)
        self._takeover = reg(TAKEOVER)
        self._join_group = reg(JOIN_GROUP)
        self._pop_timers = reg(POP_TIMERS)
        self._register = reg(REGISTER)
        self._unclaim = reg(UNCLAIM)
        self._finish = reg(FINISH)
        self._drop = reg(DROP)
        self._sent = reg(SENT)
        self._lost = reg(LOST)
        self._lease = reg(LEASE)

    @property
    def client(self) -> redis.Redis:
        """This thread's own client, on one connection of the shared pool.

        A pooled client checks a connection out and polls its socket
        (``can_read``) on every command: ~15% of a worker's CPU.  One
        connection per thread does neither, and blocking reads stay per thread.
        """
        clients: dict[int, redis.Redis] | None = getattr(_THREAD, "clients", None)
        if clients is None:
            clients = _THREAD.clients = {}
        client = clients.get(id(self._pool))
        if client is None:
            client = clients[id(self._pool)] = redis.Redis(connection_pool=self._pool, single_connection_client=True)
        return client

    # -- clock ---------------------------------------------------------------

    @property
    def clock_offset(self) -> float:
        """Redis clock minus local clock, in seconds (measured once, lazily)."""
        if self._clock_offset is None:
            before = time.time()
            sec, usec = self.client.time()
            after = time.time()
            self._clock_offset = (sec + usec / 1e6) - (before + after) / 2
        return self._clock_offset

    def now(self) -> float:
        """Return the current time on the Redis clock (estimated locally)."""
        return time.time() + self.clock_offset

    # -- guard ---------------------------------------------------------------

    def _writable(self) -> None:
        if self._frozen is not None:
            raise ControllerClosedError("the controller was shut down; its run is read-only")

    # -- resources -----------------------------------------------------------

    def register(self, rtype: str, guid: int | None) -> int:
        """Create a NEW resource; return its guid, or -1 if ``guid`` is taken."""
        self._writable()
        k = self.keys
        return int(
            self._register(client=self.client, keys=[k.run, k.guids],
                           args=[k.key("rm", ""), "" if guid is None else guid, rtype, os.urandom(6).hex()])
        )

    def guids(self) -> list[int]:
        """Return every guid of the run, ascending."""
        if self._frozen is not None:
            return sorted(self._frozen["rms"])
        return [int(g) for g in self.client.zrange(self.keys.guids, 0, -1)]

    def missing(self, guids: Iterable[int]) -> list[int]:
        """Return the guids of ``guids`` that name no resource of this run."""
        guids = list(guids)
        if not guids:
            return []
        if self._frozen is not None:
            return [g for g in guids if g not in self._frozen["rms"]]
        scores = self.client.zmscore(self.keys.guids, guids)
        return [g for g, s in zip(guids, scores, strict=True) if s is None]

    def rm_field(self, guid: int, field: str) -> str | None:
        """Return one field of a resource's hash."""
        if self._frozen is not None:
            return self._frozen["rms"].get(guid, {}).get(field)
        value: str | None = self.client.hget(self.keys.rm(guid), field)
        return value

    def rm_fields(self, guid: int, *fields: str) -> list[str | None]:
        """Return several fields of a resource's hash in one round trip."""
        if self._frozen is not None:
            data = self._frozen["rms"].get(guid, {})
            return [data.get(f) for f in fields]
        return list(self.client.hmget(self.keys.rm(guid), list(fields)))

    def rm_all(self, guid: int) -> dict[str, str]:
        """Return a resource's whole hash ({} when unknown)."""
        if self._frozen is not None:
            return dict(self._frozen["rms"].get(guid, {}))
        data: dict[str, str] = self.client.hgetall(self.keys.rm(guid))
        return data

    def rm_all_many(self, guids: Sequence[int]) -> list[dict[str, str]]:
        """Return the whole hash of many resources, in round trips of 500 (what a save reads)."""
        if self._frozen is not None:
            return [dict(self._frozen["rms"].get(g, {})) for g in guids]
        out: list[dict[str, str]] = []
        for i in range(0, len(guids), 500):
            pipe = self.client.pipeline(transaction=False)
            for g in guids[i : i + 500]:
                pipe.hgetall(self.keys.rm(g))
            out.extend(pipe.execute())
        return out

    def state(self, guid: int) -> int:
        """Return a resource's state; raise UnknownGuidError when there is none."""
        value = self.rm_field(guid, "state")
        if value is None:
            raise UnknownGuidError(f"no resource with guid {guid}")
        return int(value)

    def field_of_many(self, guids: Sequence[int], field: str) -> list[str | None]:
        """Return one field of many resources in one round trip."""
        if self._frozen is not None:
            return [self._frozen["rms"].get(g, {}).get(field) for g in guids]
        pipe = self.client.pipeline(transaction=False)
        for g in guids:
            pipe.hget(self.keys.rm(g), field)
        return list(pipe.execute())

    def states(self, guids: Sequence[int]) -> list[int | None]:
        """Return the states of many resources in one round trip."""
        return [None if s is None else int(s) for s in self.field_of_many(guids, "state")]

    def set_fields(self, guid: int, mapping: dict[str, str]) -> None:
        """Write fields of a resource's hash together."""
        self._writable()
        self.client.hset(self.keys.rm(guid), mapping=mapping)

    def update_json_field(self, guid: int, field: str, update: Any) -> Any:
        """Read-modify-write a JSON field of a resource atomically (optimistic lock).

        ``update(old_value_or_None)`` returns the new value.
        """
        self._writable()
        key = self.keys.rm(guid)
        result: list[Any] = []

        def txn(pipe: Any) -> None:
            raw = pipe.hget(key, field)
            new = update(None if raw is None else json.loads(raw))
            pipe.multi()
            pipe.hset(key, field, json.dumps(new))
            result.append(new)

        self.client.transaction(txn, key)
        return result[-1]

    def connect(self, guid1: int, guid2: int) -> None:
        """Record a connection both ways."""
        self._writable()
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.keys.conn(guid1), guid2)
        pipe.sadd(self.keys.conn(guid2), guid1)
        pipe.execute()

    def connections_of_many(self, guids: Sequence[int]) -> list[set[int]]:
        """Return the connections of many resources in one round trip."""
        if self._frozen is not None:
            return [set(self._frozen["conns"].get(g, ())) for g in guids]
        pipe = self.client.pipeline(transaction=False)
        for g in guids:
            pipe.smembers(self.keys.conn(g))
        return [{int(c) for c in members} for members in pipe.execute()]

    def connections(self, guid: int) -> set[int]:
        """Return the guids connected to ``guid``."""
        if self._frozen is not None:
            return set(self._frozen["conns"].get(guid, ()))
        return {int(g) for g in self.client.smembers(self.keys.conn(guid))}

    # -- transitions ---------------------------------------------------------

    def transition(
        self, guid: int, state: int, *, horizon: float, allowed_from: Iterable[int] = (), through: Iterable[int] = ()
    ) -> Transition:
        """Move a resource to ``state`` in one atomic step (see module docstring).

        ``through``: states passed on the way, in order (e.g. DISCOVERED and
        PROVISIONED on the way to READY), each stamped with the same time and
        announced on the event stream before ``state``.

        No change once RELEASED, nor when already in ``state``, nor when the
        current state is not in ``allowed_from`` (if given).  The actions it
        wakes are in the outbox, due at the transition's time plus the delay
        their condition was parked with; those due beyond ``horizon`` seconds
        are in the timers instead and not returned.
        """
        self._writable()
        k = self.keys
        allowed = ",".join(str(int(s)) for s in allowed_from)
        passed = ",".join(str(int(s)) for s in through)
        out = self._transition(
            client=self.client,
            keys=[k.rm(guid), k.wait(guid), k.run, k.events, k.outbox, k.pending, k.alarm, k.timers],
            args=[int(state), allowed, guid, k.prefix, horizon, passed, os.urandom(6).hex()],
        )
        if out[0] == -1:
            raise UnknownGuidError(f"no resource with guid {guid}")
        return Transition(bool(out[0]), int(out[1]), _woken(out[2:]))

    def check(self, group: Sequence[int], state: int, park: Payload | None) -> CheckResult:
        """Evaluate "every guid of ``group`` reached ``state``" atomically.

        When unmet and ``park`` is given, the payload is parked on the first
        unmet guid, to be woken by the transition that satisfies it.
        """
        self._writable()
        keys: list[str] = []
        for g in group:
            keys += [self.keys.rm(g), self.keys.wait(g)]
        out = self._check(client=self.client, keys=keys, args=[int(state), "" if park is None else json.dumps(park)])
        if out[0] == "ok":
            return CheckResult("ok", 0, float(out[1]), float(out[2]))
        return CheckResult(out[0], int(out[1]))

    def gate(self, guid: int, action: int) -> GateView:
        """Read what the gate of ``action`` on ``guid`` needs, in one round trip.

        The RM's state, its conditions, and each of the action's conditions
        evaluated without parking (its group's latest time at the needed state
        when it holds).  A condition that does not hold is decided by
        :meth:`check`, which parks atomically.
        """
        if self._frozen is not None:
            data = self._frozen["rms"].get(guid, {})
            state, cond = data.get("state"), data.get("cond")
            return GateView(None if state is None else int(state), cond, [])
        out = self._gate(client=self.client, keys=[self.keys.rm(guid)], args=[self.keys.prefix, int(action)])
        now = float(out[0] or 0)
        checks = [CheckResult(out[i], 0, float(out[i + 1]), now) for i in range(3, len(out), 2)]
        return GateView(int(out[1]) if out[1] else None, out[2] or None, checks)

    # -- groups --------------------------------------------------------------

    def next_id(self, name: str) -> int:
        """Return the next value of a per-run counter (``group``, ``seq``)."""
        self._writable()
        return int(self.client.hincrby(self.keys.run, name, 1))

    def join_group(self, gid: int, guids: Sequence[int], wait_all_ready: bool) -> list[int]:
        """Add guids to deployment group ``gid``; return guids to start now (group all READY)."""
        self._writable()
        k = self.keys
        out = self._join_group(
            client=self.client, keys=[k.group(gid), k.group_start(gid)],
            args=[gid, int(wait_all_ready), k.prefix, *guids],
        )
        return [int(g) for g in out]

    # -- actions -------------------------------------------------------------

    def add_pending(self, items: Sequence[Dispatch]) -> None:
        """Record actions as published and unclaimed, their payloads in ``sent`` (before publishing them).

        A message lost on its way is sent again from ``sent`` by a keeper
        (:meth:`lost_sends`), as is one whose publisher died before it published.
        """
        self._writable()
        if not items:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.pending, {aid: due for aid, _, due in items})
        pipe.hset(self.keys.sent, mapping={aid: json.dumps(p, separators=(",", ":")) for aid, p, _ in items})
        pipe.execute()

    def add_outbox(self, items: Sequence[Dispatch]) -> None:
        """Record decided actions as pending and in the outbox, to be published a moment later.

        Should their publisher die first, the failure manager re-publishes
        them from the outbox once the publisher's lease has run out.
        """
        self._writable()
        if not items:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.outbox, mapping={aid: json.dumps(p, separators=(",", ":")) for aid, p, _ in items})
        pipe.zadd(self.keys.pending, {aid: due for aid, _, due in items})
        pipe.set(self.keys.publishing, 1, ex=OUTBOX_LEASE)
        pipe.execute()

    def unpend(self, aids: Sequence[str]) -> None:
        """Forget action ids whose publication failed."""
        if aids:
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.keys.pending, *aids)
            pipe.hdel(self.keys.sent, *aids)
            pipe.execute()

    def clear_outbox(self, aids: Sequence[str]) -> None:
        """Move published actions from the outbox to ``sent`` (until claimed), renewing the publisher's lease."""
        if aids:
            k = self.keys
            self._sent(client=self.client, keys=[k.outbox, k.pending, k.sent, k.publishing],
                       args=[OUTBOX_LEASE, *aids])

    def lost_sends(self, older_than: float, limit: int = 500) -> list[Dispatch]:
        """Return published actions still unclaimed ``older_than`` s after they were due, now due again.

        Their message was lost: a consumer popped it and died before kombu
        recorded it as unacknowledged (so no visibility timeout brings it
        back), or its publisher died before publishing.  ``older_than`` is
        the visibility timeout plus a grace, past which a message that merely
        waited in a worker would have come back by itself.
        """
        now = self.now()
        k = self.keys
        out = self._lost(client=self.client, keys=[k.pending, k.sent], args=[now - older_than, now, limit])
        return [(str(out[i]), json.loads(out[i + 1]), now) for i in range(0, len(out), 2)]

    def stale_outbox(self, older_than: float) -> list[Dispatch]:
        """Return outbox actions decided more than ``older_than`` seconds ago."""
        if self.client.exists(self.keys.publishing):
            return []  # a live publisher is still working through the outbox
        entries: dict[str, str] = self.client.hgetall(self.keys.outbox)
        if not entries:
            return []
        aids = list(entries)
        dues = self.client.zmscore(self.keys.pending, aids)
        limit = self.now() - older_than
        stale: list[Dispatch] = []
        for aid, due in zip(aids, dues, strict=True):
            if due is None:  # claimed already: the publish happened
                self.client.hdel(self.keys.outbox, aid)
            elif due < limit:
                stale.append((aid, json.loads(entries[aid]), due))
        return stale

    def claim(self, aid: str, token: str, is_release: bool, suspect: str | None = None) -> str:
        """Claim an action with ``token`` (``<worker id>/<nonce>``); return ``run`` or why not.

        ``resume``: the action was claimed before by a holder that no longer
        runs it (a worker known dead, a claim its worker gave up, or this very
        worker after a Redis error cut the action short); it is taken over and
        must be carried to its end.  ``skip:…``: the action is done or refused.
        ``wait:<worker>``: another worker, alive by its heartbeat, holds it;
        look again once that heartbeat would have expired (the worker may have
        just died).  ``suspect:<holder token>``: the holder's heartbeat is gone,
        which after a Redis stall may only mean that Redis' clock jumped past
        it; look again after a heartbeat period, passing the token as
        ``suspect``: if the same holder still has no heartbeat, it is taken over.

        The caller makes sure this process does not run ``aid`` already, so a
        claim held by this worker under another token is one it gave up.
        """
        k = self.keys
        verdict, holder = self._claim(
            client=self.client, keys=[k.run, k.pending, k.running, k.sent], args=[aid, token, int(is_release)]
        )
        if verdict != "held":
            return "run" if verdict == "run" else f"skip:{holder}"
        worker = holder.partition("/")[0]
        if worker not in (UNCLAIMED, token.partition("/")[0]):
            record = self.client.get(worker_key(worker))
            if record is not None and not json.loads(record).get("dead"):
                return f"wait:{worker}"
            if record is None and holder != suspect:
                return f"suspect:{holder}"
        took = self._takeover(client=self.client, keys=[k.running], args=[aid, holder, token])
        return "resume" if took else "skip:running"

    def unclaim(self, claims: Sequence[tuple[str, str]]) -> int:
        """Give up claims ``(aid, token)`` whose action no longer runs here; return how many."""
        if not claims:
            return 0
        args = [UNCLAIMED] + [x for pair in claims for x in pair]
        return int(self._unclaim(client=self.client, keys=[self.keys.running], args=args))

    def claims_of(self, worker_id: str) -> list[tuple[str, str]]:
        """Return the (action id, token) of every claim of this run that ``worker_id`` holds."""
        prefix = f"{worker_id}/"
        running: dict[str, str] = self.client.hgetall(self.keys.running)
        return [(aid, token) for aid, token in running.items() if token.startswith(prefix)]

    def heartbeat_left(self, worker_id: str) -> float:
        """Return the seconds until the heartbeat of ``worker_id`` expires (0 if gone)."""
        ms = self.client.pttl(worker_key(worker_id))
        return 0.0 if ms == -2 else HEARTBEAT_TTL if ms == -1 else ms / 1000.0

    def finish(self, aid: str, token: str, tracked: bool, status: str, result: Any) -> None:
        """Mark an action claimed with ``token`` done, recording status and result when tracked.

        A claim taken over meanwhile (this worker was thought dead) is left to its new holder.
        """
        args = [aid, token] + ([status, json.dumps(result)] if tracked else [])
        self._finish(client=self.client, keys=[self.keys.running, self.keys.task(aid)], args=args)

    def track(self, aid: str) -> None:
        """Create the status record of a tracked action (status NEW)."""
        self._writable()
        self.client.hset(self.keys.task(aid), mapping={"s": "NEW", "r": "null"})

    def task_status(self, aid: str) -> tuple[str, Any] | None:
        """Return (status, result) of a tracked action, or None."""
        frozen = self._frozen
        rec = frozen["tasks"].get(aid) if frozen is not None else self.client.hgetall(self.keys.task(aid))
        if not rec:
            return None
        return rec["s"], json.loads(rec["r"])

    def add_timers(self, items: Iterable[tuple[str, Payload, float]]) -> None:
        """Keep actions due beyond the ETA horizon in Redis until they come close."""
        self._writable()
        mapping = {json.dumps({"aid": aid, "p": p}): due for aid, p, due in items}
        if mapping:
            self.client.zadd(self.keys.timers, mapping)

    def pop_timers(self, until: float) -> list[Dispatch]:
        """Move timers due before ``until`` to the outbox; return them."""
        k = self.keys
        out = self._pop_timers(client=self.client, keys=[k.timers, k.outbox, k.pending], args=[until])
        items: list[Dispatch] = []
        for i in range(0, len(out), 2):
            item = json.loads(out[i])
            items.append((item["aid"], item["p"], float(out[i + 1])))
        return items

    def pending_ids(self) -> list[str]:
        """Return every published, unclaimed action id."""
        return list(self.client.zrange(self.keys.pending, 0, -1))

    def drop_pending(self, for_abort: bool = False) -> list[str]:
        """Forget every pending action, timer and outbox entry; return the ids dropped.

        ``for_abort``: only the first caller after the run aborted drops (see ``DROP``).
        """
        self._writable()
        k = self.keys
        out = self._drop(client=self.client, keys=[k.run, k.pending, k.timers, k.outbox, k.sent],
                         args=[int(for_abort)])
        return [str(aid) for aid in out]

    # -- run -----------------------------------------------------------------

    def run_field(self, name: str) -> str | None:
        if self._frozen is not None:
            return self._frozen["run"].get(name)
        value: str | None = self.client.hget(self.keys.run, name)
        return value

    def run_fields(self) -> dict[str, str]:
        """Return the run's whole hash (a few fields: see :mod:`nepi_dist.engine.keys`)."""
        if self._frozen is not None:
            return dict(self._frozen["run"])
        data: dict[str, str] = self.client.hgetall(self.keys.run)
        return data

    def set_run_field(self, name: str, value: str, only_new: bool = False) -> str:
        """Write one field of the run's hash (with ``only_new``, only when it has none); return its value."""
        self._writable()
        if only_new:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(self.keys.run, name, value)
            pipe.hget(self.keys.run, name)
            return str(pipe.execute()[1])
        self.client.hset(self.keys.run, name, value)
        return value

    def failure_level(self) -> int:
        """Return the run's failure level (one key read)."""
        return int(self.run_field("fl") or FailureLevel.OK)

    def set_failure_level(self, level: int) -> None:
        """Raise the run's failure level and wake waiters through the event stream."""
        self._writable()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.run, "fl", level)
        pipe.xadd(self.keys.events, {"g": -1, "s": level, "t": f"{self.now():.6f}"})
        pipe.execute()

    def mark_dropping(self) -> None:
        """Mark the whole run as being released: only release actions still run."""
        self._writable()
        self.client.hset(self.keys.run, "drop", 1)

    # -- the run's lifecycle -------------------------------------------------

    def enlist(self) -> None:
        """Put the run among those the workers' keepers look after (until it is retired)."""
        self._writable()
        if not self.client.hexists(self.keys.run, "released"):
            self.client.zadd(RUNS_KEY, {self.keys.member: self.now()}, nx=True)

    def retire(self, retention: float) -> int:
        """Mark the whole run released: off the keepers' list, every key expiring in ``retention`` s.

        Returns how many keys were given the expiry.
        """
        self._writable()
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(k.run, "released", f"{self.now():.6f}")
        pipe.zrem(RUNS_KEY, k.member)
        pipe.execute()
        keys = list(self.client.scan_iter(match=k.pattern(), count=1000))
        ttl = max(1, int(retention))
        for i in range(0, len(keys), 500):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[i : i + 500]:
                pipe.expire(key, ttl)
            pipe.execute()
        return len(keys)

    def take_lease(self, holder: str, ms: int) -> bool:
        """Take or renew the run's keeper lease for ``holder``; True when it holds it."""
        return bool(self._lease(client=self.client, keys=[self.keys.keeper], args=[holder, ms]))

    # -- events --------------------------------------------------------------

    def last_event_id(self) -> str:
        """Return the id of the newest event ('0-0' when none)."""
        last = self.client.xrevrange(self.keys.events, count=1)
        return str(last[0][0]) if last else "0-0"

    def events(self, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Return events after id ``after``, blocking up to ``block_ms``."""
        reply = self.client.xread({self.keys.events: after}, block=block_ms, count=10000)
        if not reply:
            return []
        return [(str(i), f) for i, f in reply[0][1]]

    def pop_alarm(self, timeout: float) -> str | None:
        """Block up to ``timeout`` s for a critical-failure alarm; return the guid."""
        reply = self.client.blpop([self.keys.alarm], timeout=timeout)
        return None if reply is None else str(reply[1])

    def ring_alarm(self, why: str) -> None:
        """Wake the failure manager (used at shutdown)."""
        self.client.rpush(self.keys.alarm, why)

    # -- snapshot ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return every resource hash, connection and tracked task of the run."""
        guids = self.guids()
        rms: dict[int, dict[str, str]] = {}
        conns: dict[int, set[int]] = {}
        for i in range(0, len(guids), 500):
            chunk = guids[i : i + 500]
            pipe = self.client.pipeline(transaction=False)
            for g in chunk:
                pipe.hgetall(self.keys.rm(g))
                pipe.smembers(self.keys.conn(g))
            replies = pipe.execute()
            for j, g in enumerate(chunk):
                rms[g] = replies[2 * j]
                conns[g] = {int(c) for c in replies[2 * j + 1]}
        tasks = {}
        for key in self.client.scan_iter(match=self.keys.task("*"), count=1000):
            tasks[key.rsplit(":", 1)[1]] = self.client.hgetall(key)
        return {"rms": rms, "conns": conns, "tasks": tasks, "run": self.client.hgetall(self.keys.run)}

    def freeze(self, snapshot: dict[str, Any]) -> None:
        """Serve reads from ``snapshot`` from now on; refuse writes."""
        self._frozen = snapshot

    @property
    def frozen(self) -> bool:
        return self._frozen is not None
