"""The Redis *host* crash (a power loss) mid-run, and why each action it broke broke.

Used by ``test_redis_host_crash.py`` (``appendfsync always``, in ``make
test``) and by ``host_crash_scenario.py`` (``appendfsync everysec``, by hand:
what that setting costs, measured).

A SIGKILLed redis-server loses nothing it ``write()``-ed: the page cache keeps
it.  A power loss of its host loses what was not yet on the disk.
:class:`HostCrash` emulates that from what the disk really holds
(:mod:`tests.chaos.powerloss`: an fsync shim preloaded into Redis records
what each fsync made durable): Redis is SIGKILLed, each AOF file is cut back
to its last durable size, and Redis starts again on the same port from what is
left, :data:`DOWN` s later.  Under ``always`` that is every write a client was
told of; under ``everysec`` up to ~1 s of them are gone.

Two workers serve 300 ChaosSteps whose starts are spread over 3 s after an
anchor's; the crash comes 1-2 s after the anchor started.  The promises are
those of the Redis restart: every start and finish takes effect once (counted
from the run's event stream, as in every chaos scenario), within
:data:`REDELIVERY` s of Redis being back; every RM ends FINISHED; no worker
exits.  For every lost, duplicated or stuck action the run's line says why:
the writes of it that the cut dropped (read from the AOF itself), and the keys
after the restart (Redis' state loaded from the cut files, on a private
server) and at the end (pending, running, outbox, the RM's state and ``tx``,
kombu's unacked hash and queue), with the ledger's lines; each anomaly gets
one of the causes of :data:`CAUSES`, and the line counts them.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import random
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from nepi_dist import ResourceState
from nepi_dist.engine.keys import Keys

from .harness import REDELIVERY, Cluster, Entry, RedisProcess, Run, Scenario, ride_out_redis_fault
from .powerloss import FileCut, shim

N = 300
ITERATIONS = 3
SPREAD = 3.0
DOWN = 2.0
#: kombu's Redis transport: delivered, unacknowledged messages (tag -> [message, exchange, routing key]).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
#: How many anomalies of each cause a run explains in full (the others are counted).
EXPLAIN = 2


# -- the AOF ---------------------------------------------------------------------------


def aof_file(directory: Path) -> Path:
    """The AOF file a redis-server in ``directory`` appends to now.

    Redis 6.2: ``appendonly.aof``.  Redis 7: the last ``type i`` (incr) file
    its manifest lists, in ``appendonlydir``.
    """
    single = directory / "appendonly.aof"
    if single.is_file():
        return single
    parts = directory / "appendonlydir"
    manifests = sorted(parts.glob("*.manifest"))
    if manifests:
        incr = [line.split()[1] for line in manifests[-1].read_text().splitlines()
                if " type i" in line and line.startswith("file ")]
        if incr:
            return parts / incr[-1]
    raise FileNotFoundError(f"no append-only file in {directory}")


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of an AOF: its bytes ``start``..``end`` and its arguments."""

    start: int
    end: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return self.args[0].decode(errors="replace").upper() if self.args else ""


def parse_aof(data: bytes, start: int = 0) -> tuple[list[Command], int]:
    """Parse the commands of ``data`` from ``start``; return them and where the first incomplete one begins.

    RESP arrays of bulk strings, as Redis writes them; Redis 7's ``#``
    annotation lines are skipped.
    """
    out: list[Command] = []
    pos, n = start, len(data)
    while pos < n:
        begin = pos
        if data[pos:pos + 1] == b"#":
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                return out, begin
            pos = eol + 2
            continue
        eol = data.find(b"\r\n", pos)
        if eol < 0 or data[pos:pos + 1] != b"*":
            return out, begin
        argc = int(data[pos + 1:eol])
        pos = eol + 2
        args: list[bytes] = []
        for _ in range(argc):
            eol = data.find(b"\r\n", pos)
            if eol < 0 or data[pos:pos + 1] != b"$":
                return out, begin
            size = int(data[pos + 1:eol])
            pos = eol + 2
            if pos + size + 2 > n:
                return out, begin
            args.append(data[pos:pos + size])
            pos += size + 2
        out.append(Command(begin, pos, tuple(args)))
    return out, pos


#: Commands that only frame others (a script's effects, a transaction) or select the db.
FRAMING = {"MULTI", "EXEC", "SELECT"}


def writes(commands: Iterable[Command]) -> list[Command]:
    """The commands that change data (no MULTI / EXEC / SELECT)."""
    return [c for c in commands if c.name not in FRAMING]


# -- the crash ---------------------------------------------------------------------------


@dataclasses.dataclass
class Cut:
    """What one emulated power loss did to the AOF file that grows, and the other files' cuts."""

    killed: float  # Redis clock
    aof: Path
    boundary: int  # the durable size it was cut back to
    full: bytes  # the file at the kill
    files: list[FileCut]
    restart_image: Path | None = None  # a copy of Redis' directory as it restarted from it

    @property
    def dropped(self) -> list[Command]:
        """Every command written after the boundary: what the restarted Redis lacks."""
        return parse_aof(self.full, self.boundary)[0]

    @property
    def bytes_lost(self) -> int:
        return sum(f.lost for f in self.files)


class HostCrash:
    """The fault: a power loss of Redis' host (:meth:`RedisProcess.power_loss`), then Redis again on its port."""

    def __init__(self, rp: RedisProcess, images: Path) -> None:
        self.rp = rp
        self.images = images
        self.cut: Cut | None = None

    def down(self) -> None:
        killed = self.rp.now()
        path = aof_file(self.rp.dir)
        files = self.rp.power_loss()
        grows = next(f for f in files if f.path == path)
        image = self.images / f"restart-{len(list(self.images.iterdir())) if self.images.exists() else 0}"
        shutil.copytree(self.rp.dir, image, ignore=shutil.ignore_patterns("redis.log", "fsync.log"))
        self.cut = Cut(killed=killed, aof=path, boundary=grows.kept, full=grows.full, files=files,
                       restart_image=image)

    def up(self) -> None:
        self.rp.start()


# -- reading what the AOF and the keys say about a run's actions ---------------------------


@dataclasses.dataclass(frozen=True)
class Message:
    """A kombu message of one run, as it travels in the AOF: its delivery tag, task, action ids, ETA."""

    tag: str
    task: str
    aids: tuple[str, ...]
    eta: str | None
    redelivered: bool
    origin: str  # the pid of the process that published it (Celery's ``origin`` header: gen<pid>@host)


def decode_message(raw: bytes | str | dict[str, Any], run: tuple[str, str]) -> Message | None:
    """The :class:`Message` of a kombu message (its JSON, or decoded) when it carries actions of ``run``, else None."""
    try:
        m = raw if isinstance(raw, dict) else json.loads(raw)
        headers, props = m["headers"], m["properties"]
        args = json.loads(base64.b64decode(m["body"]))[0]
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
        return None
    if not isinstance(args, list) or len(args) < 3 or (args[0], args[1]) != run:
        return None
    task = str(headers.get("task"))
    aids = tuple(str(i[0]) for i in args[2]) if task == "nepi.batch" else (str(args[2]),)
    origin = str(headers.get("origin") or "")
    return Message(str(props.get("delivery_tag")), task, aids, headers.get("eta"),
                   bool(headers.get("redelivered")), origin.partition("@")[0].removeprefix("gen"))


def holder_pid(token: str) -> str:
    """``pid <pid>`` of a claim token (``<host>.<pid>.<hex>/<nonce>``), or the token when it is not one."""
    parts = token.partition("/")[0].split(".")
    return f"pid {parts[-2]}" if len(parts) >= 3 and parts[-2].isdigit() else token


@dataclasses.dataclass(frozen=True)
class Write:
    """One write of the AOF about an action or RM of the run: ``when`` kept, dropped or after (the restart)."""

    offset: int
    when: str
    kind: str
    text: str


class RunWrites:
    """Every write of the AOF about one run's actions and RMs, each labelled (see :meth:`label`).

    ``full`` is the file at the kill, ``boundary`` where it was cut back,
    ``final`` the file at the end of the run (what Redis wrote after it came
    back starts at ``boundary``: Redis truncated its copy there).
    """

    def __init__(self, keys: Keys, full: bytes, boundary: int, final: bytes) -> None:
        self.keys = keys
        self.prefix = keys.prefix
        self.by_guid: dict[int, list[Write]] = collections.defaultdict(list)
        self.aid_guid: dict[str, int] = {}
        self.aid_method: dict[str, str] = {}
        self.messages: dict[str, Message] = {}
        #: How many dropped commands did each kind of thing to the run (a batch's ack counts once).
        self.dropped_kinds: collections.Counter[str] = collections.Counter()
        before, _ = parse_aof(full)
        after, _ = parse_aof(final, boundary) if final[:boundary] == full[:boundary] else ([], 0)
        self._queues: dict[bytes, collections.deque[str | None]] = collections.defaultdict(collections.deque)
        for phase, commands in (("before", before), ("after", after)):
            for c in commands:
                when = phase if phase == "after" else ("kept" if c.start < boundary else "dropped")
                labels = self.label(c)
                if when == "dropped":
                    self.dropped_kinds.update({kind for _, kind, _ in labels})
                for guid, kind, text in labels:
                    if guid is None:
                        continue
                    mine = self.by_guid[guid]
                    if kind == "restore" and mine and mine[-1].kind == "ack" and mine[-1].text[8:14] == text[-6:]:
                        mine.pop()  # kombu's restore takes the message out of the unacked hash first
                    mine.append(Write(c.start, when, kind, text))

    def _aid_of(self, aid: bytes | str, payload: bytes | str | None = None) -> int | None:
        aid = aid.decode() if isinstance(aid, bytes) else aid
        if payload is not None and aid not in self.aid_guid:
            try:
                p = json.loads(payload)
                self.aid_guid[aid] = int(p["g"])
                self.aid_method[aid] = str(p["m"])
            except (ValueError, KeyError, TypeError):
                pass
        return self.aid_guid.get(aid)

    def label(self, c: Command) -> list[tuple[int | None, str, str]]:
        """(guid or None, kind, text) of each thing command ``c`` does to the run (its kombu messages included)."""
        a, name, k = c.args, c.name, self.keys
        if len(a) < 2:
            return []
        key = a[1].decode(errors="replace")
        out: list[tuple[int | None, str, str]] = []
        if key == k.outbox and name == "HSET":
            for i in range(2, len(a) - 1, 2):
                out.append((self._aid_of(a[i], a[i + 1]), "outbox+", f"outbox+ {a[i].decode()}"))
        elif key == k.outbox and name == "HDEL":
            out += [(self._aid_of(x), "outbox-", f"outbox- {x.decode()}") for x in a[2:]]
        elif key == k.pending and name == "ZADD":
            first = 2
            while first < len(a) and a[first].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
                first += 1
            out += [(self._aid_of(a[i + 1]), "pending+", f"pending+ {a[i + 1].decode()}")
                    for i in range(first, len(a) - 1, 2)]
        elif key == k.pending and name == "ZREM":
            out += [(self._aid_of(x), "claim", f"claim {x.decode()} (pending-)") for x in a[2:]]
        elif key == k.running and name == "HSET":
            for i in range(2, len(a) - 1, 2):
                holder = a[i + 1].decode()
                kind = "unclaim" if holder == "-" else "running+"
                out.append((self._aid_of(a[i]), kind, f"running {a[i].decode()}={holder_pid(holder)}"))
        elif key == k.running and name == "HDEL":
            out += [(self._aid_of(x), "finish", f"finish {x.decode()} (running-)") for x in a[2:]]
        elif key.startswith(k.key("rm", "")) and name == "HSET":
            guid = int(key[len(k.key("rm", "")):])
            fields = {a[i].decode(): a[i + 1].decode(errors="replace") for i in range(2, len(a) - 1, 2)}
            if "state" in fields:
                state = ResourceState(int(fields["state"])).name
                out.append((guid, "transition", f"state={state} tx={fields.get('tx', '')[:12]}"))
        elif key == k.run and name == "HINCRBY" and a[2] == b"seq":
            out.append((None, "seq", "seq+"))
        elif name in ("LPUSH", "RPUSH"):
            for raw in a[2:]:
                msg = decode_message(raw, (self.keys.exp_id, self.keys.run_id))
                queue = self._queues[a[1]]
                (queue.appendleft if name == "LPUSH" else queue.append)(msg.tag if msg else None)
                if msg is None:
                    continue
                self.messages[msg.tag] = msg
                kind = "restore" if msg.redelivered else "publish"
                for aid in msg.aids:
                    what = (f"{kind} {msg.task.split('.')[-1]}[{len(msg.aids)}] {aid}{' eta' if msg.eta else ''}"
                            f"{' by pid ' + msg.origin if kind == 'publish' else ''}")
                    out.append((self._aid_of(aid), kind, f"{what} tag {msg.tag[:6]}"))
        elif name in ("RPOP", "LPOP"):
            popped = self._queues.get(a[1])
            count = int(a[2]) if len(a) > 2 else 1
            for _ in range(count):
                if not popped:
                    break
                tag = popped.pop() if name == "RPOP" else popped.popleft()
                msg = self.messages.get(tag) if tag else None
                if msg is not None and tag is not None:
                    out += [(self._aid_of(aid), "deliver", f"delivered tag {tag[:6]}") for aid in msg.aids]
        elif key == UNACKED and name == "HSET":
            for i in range(2, len(a) - 1, 2):
                msg = self.messages.get(a[i].decode())
                if msg is not None:
                    out += [(self._aid_of(aid), "unacked+", f"unacked+ tag {msg.tag[:6]}") for aid in msg.aids]
        elif key == UNACKED and name == "HDEL":
            for x in a[2:]:
                msg = self.messages.get(x.decode())
                if msg is not None:
                    out += [(self._aid_of(aid), "ack", f"ack tag {msg.tag[:6]} (unacked-)") for aid in msg.aids]
        return out

    def aids_of(self, guid: int) -> list[str]:
        return sorted((aid for aid, g in self.aid_guid.items() if g == guid), key=lambda s: (len(s), s))


@dataclasses.dataclass
class RunKeys:
    """The keys of a run an anomaly is read from (at the restart, or at the end)."""

    rms: dict[int, dict[str, str]]
    pending: dict[str, float]
    running: dict[str, str]
    outbox: dict[str, str]
    unacked: dict[str, Message]
    queued: dict[str, Message]
    #: guid -> the states its events in the run's stream record, with their times.
    events: dict[int, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)

    def about(self, guid: int, aids: Sequence[str], since: float) -> str:
        """What these keys say of ``guid`` and its actions ``aids`` (times relative to ``since``)."""
        rm = self.rms.get(guid, {})
        state = rm.get("state")
        parts = [f"state={ResourceState(int(state)).name if state is not None else 'missing'}"]
        for field in ("t3", "t4", "t6"):
            if field in rm:
                parts.append(f"{field}={float(rm[field]) - since:+.2f}")
        parts.append(f"tx=[{rm.get('tx', '')[:38]}]")
        parts.append("events=[" + " ".join(f"{ResourceState(st).name}@{t - since:+.2f}"
                                           for st, t in self.events.get(guid, [])) + "]")
        for aid in aids:
            bits = []
            if aid in self.pending:
                bits.append(f"pending(due {self.pending[aid] - since:+.2f})")
            if aid in self.running:
                bits.append(f"running={holder_pid(self.running[aid])}")
            if aid in self.outbox:
                bits.append("outbox")
            bits += [f"unacked tag {t[:6]}" for t, m in self.unacked.items() if aid in m.aids]
            bits += [f"queued tag {t[:6]}" for t, m in self.queued.items() if aid in m.aids]
            if bits:
                parts.append(f"{aid}: " + ",".join(bits))
        return " ".join(parts)


def read_keys(client: redis.Redis, keys: Keys, guids: Sequence[int], queue: str = "nepi.pool") -> RunKeys:
    """Read :class:`RunKeys` of a run from ``client``."""
    pipe = client.pipeline(transaction=False)
    for g in guids:
        pipe.hgetall(keys.rm(g))
    rms = dict(zip(guids, pipe.execute(), strict=True))
    run = (keys.exp_id, keys.run_id)
    unacked = {}
    for tag, raw in client.hgetall(UNACKED).items():
        msg = decode_message(json.loads(raw)[0], run)
        if msg is not None:
            unacked[tag] = msg
    queued = {}
    for raw in client.lrange(queue, 0, -1):
        msg = decode_message(raw, run)
        if msg is not None:
            queued[msg.tag] = msg
    events: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
    for _, f in client.xrange(keys.events):
        events[int(f["g"])].append((int(f["s"]), float(f["t"])))
    return RunKeys(rms, dict(client.zrange(keys.pending, 0, -1, withscores=True)), client.hgetall(keys.running),
                   client.hgetall(keys.outbox), unacked, queued, dict(events))


def keys_of_image(image: Path, binary: str, keys: Keys, guids: Sequence[int]) -> RunKeys:
    """The run's keys in the Redis that a copy of a server's directory holds (loaded by a private server)."""
    rp = RedisProcess(image, binary=binary).start()
    try:
        with rp.client() as client:
            return read_keys(client, keys, guids)
    finally:
        rp.close()


# -- the scenario ------------------------------------------------------------------------


class HostCrashScenario(Scenario):
    """A :class:`Scenario` that reads each run's keys before its controller releases it."""

    def __init__(self, cluster: Cluster, record_property: Callable[[str, object], None]) -> None:
        super().__init__(cluster, record_property)
        self.at_end: dict[str, tuple[RunKeys, bytes]] = {}

    def end_run(self, run: Run, fig: Any) -> None:
        s = run.spread
        with self.cluster.redis.client() as client:
            end = read_keys(client, Keys(s.exp_id, s.run_id), s.guids)
        self.at_end[s.run_id] = (end, aof_file(self.cluster.redis.dir).read_bytes())
        super().end_run(run, fig)


@dataclasses.dataclass
class Anomaly:
    """One RM whose actions the crash broke: ``what`` broke, its ``signature`` (see :func:`signature`), the evidence."""

    guid: int
    what: str  # e.g. "start ran twice, finish ran twice"
    cause: str  # a letter of CAUSES
    signature: str
    detail: list[str]


def signature(what: str, ws: Sequence[Write], effects: Sequence[Entry], killed: float) -> str:
    """What broke, the kinds of the RM's writes the cut dropped, then those after the restart, in order."""
    dropped = [w.kind for w in ws if w.when == "dropped" and w.kind != "outbox-"]
    after = [w.kind for w in ws if w.when == "after" and w.kind != "outbox-"]
    before = sum(1 for e in effects if e.t < killed)
    return (f"{what} | dropped: {','.join(dict.fromkeys(dropped)) or 'nothing'} | after the restart: "
            f"{','.join(dict.fromkeys(after)) or 'nothing'} | effects before the kill: {before} "
            f"of {len(effects)}")


#: The causes :func:`cause` tells apart, by letter.
CAUSES = {
    "A": "the whole action ran in the lost second (claim, STARTED, FINISHED, finish, ack): Redis came back with it "
         "pending, unclaimed, its RM READY; kombu restored its message (delivered, unacked, before the lost second) "
         "after the visibility timeout; the claim succeeded again and the action ran again",
    "B": "its claim survived, its later transitions (and its finish and ack) were lost: the restored message reached "
         "the claim holder's own worker, which takes a claim of its own worker as one it gave up and resumes the "
         "action: the lost transitions, and their effects, ran again",
    "C": "its claim survived, FINISHED (and its finish and ack) were lost: the claim is held by a live worker that no "
         "longer runs it; the restored message reached the other worker, which waits for the holder (since issue 9 "
         "the holder gives such a claim up at its next heartbeat, and the action is resumed)",
    "D": "a message of it was lost (popped, its unacked entry dropped) while its pending entry survived: the "
         "keeper re-sends it from P:sent a visibility timeout after it was due",
    "E": "not an anomaly of the run: the ledger lacks an effect line that the run's event stream has (the "
         "transition was applied, its reply lost with Redis; the replay found its own token and answered "
         "'unchanged', so the RM wrote no effect line)",
    "F": "STARTED (and the claim) fell in the lost second while the body still ran: after the restart its "
         "set_finished() took the RM from READY to FINISHED; the effects ran once, but the run's history lacks "
         "STARTED",
    "G": "the RM's last transitions fell in the lost second, but the worker's finish and ack came after Redis was "
         "back: nothing runs the start again and the RM stays where Redis lost it, READY or STARTED (exactly-once "
         "cannot hold across lost acknowledged writes)",
}


def cause(what: str, ws: Sequence[Write]) -> str:
    """The letter of :data:`CAUSES` that explains an anomaly (``?`` when none does), from its RM's writes."""
    dropped = {w.kind for w in ws if w.when == "dropped"}
    after = [w.kind for w in ws if w.when == "after"]
    if "lost" in what and "unacked+" in dropped and "deliver" not in dropped:
        return "D"
    if "lost" in what and "missing from the stream" not in what and "stuck" not in what and "twice" not in what:
        return "E"
    if "claim" in dropped and "twice" in what:
        return "A"
    if "transition" in dropped and "running+" in after and "twice" in what:
        return "B"
    if "stuck" in what and "transition" in dropped and "finish" in after and "running+" not in after:
        return "G"
    if "stuck" in what and "transition" in dropped and "running+" not in after:
        return "C"
    if what == "start missing from the stream" and "transition" in dropped:
        return "F"
    return "?"


def explain(run: Run, cut: Cut, rw: RunWrites, at_restart: RunKeys, at_end: RunKeys,
            states: dict[int, str]) -> list[Anomaly]:
    """Every lost, duplicated or stuck action of a run, with why (see the module docstring)."""
    entries = run.ledger.read()
    effects: dict[tuple[int, str], list[Entry]] = collections.defaultdict(list)
    bodies: dict[tuple[int, str], list[Entry]] = collections.defaultdict(list)
    for e in entries:
        (effects if e.kind == "effect" else bodies)[(e.guid, e.action)].append(e)
    found: dict[int, list[str]] = collections.defaultdict(list)
    for g in run.spread.guids:
        for action in ("start", "finish"):
            n = len(effects.get((g, action), []))
            if n == 0:
                found[g].append(f"{action} lost")  # from the ledger: see cause E
            elif n > 1:
                found[g].append(f"{action} ran twice")
        recorded = {st for st, _ in at_end.events.get(g, [])}
        for action, st in (("start", ResourceState.STARTED), ("finish", ResourceState.FINISHED)):
            if int(st) not in recorded:
                found[g].append(f"{action} missing from the stream")
        if states.get(g) != "FINISHED":
            found[g].append(f"stuck {states.get(g)}")
    out = []
    k = cut.killed
    for g, whats in sorted(found.items()):
        ws = rw.by_guid.get(g, [])
        lines = sorted(effects.get((g, "start"), []) + effects.get((g, "finish"), []) + bodies.get((g, "start"), []),
                       key=lambda e: e.t)
        ledger = " ".join(f"{e.action}:{e.kind}@{e.t - k:+.2f}/{e.pid}" for e in lines)
        shown = [w for w in ws if w.kind != "outbox-"]
        first = next((i for i, w in enumerate(shown) if w.when != "kept"), len(shown))
        shown = shown[max(0, first - 3):first + 14]
        detail = [f"ledger (s from the kill / pid): {ledger or '-'}",
                  "writes: " + " | ".join(f"[{w.when}] {w.text}" for w in shown),
                  f"at restart: {at_restart.about(g, rw.aids_of(g), k)}",
                  f"at end:     {at_end.about(g, rw.aids_of(g), k)}"]
        what = ", ".join(whats)
        mine = effects.get((g, "start"), []) + effects.get((g, "finish"), [])
        out.append(Anomaly(g, what, cause(what, ws), signature(what, ws, mine, k), detail))
    return out




def host_crash_runs(cluster: Cluster, record_property: Callable[[str, object], None], appendfsync: str,
                    iterations: int = ITERATIONS, seed: int = 6) -> list[str]:
    """Run the scenario under ``appendfsync``: ``iterations`` runs of :data:`N` RMs, each through a power loss.

    Prints each run's line and the explained anomalies, then the
    ``CHAOS redis-host-crash-<appendfsync>`` line; returns every broken promise.
    """
    cluster.redis = RedisProcess(cluster.root / "redis", port=cluster.redis.port, appendfsync=appendfsync,
                                 preload=shim())
    scenario = HostCrashScenario(cluster, record_property)
    cluster.start(workers=2)
    rng = random.Random(seed)
    images = cluster.root / "images"
    images.mkdir()
    dropped_total = bytes_total = stuck_total = twice_total = 0
    causes: collections.Counter[str] = collections.Counter()
    signatures: collections.Counter[str] = collections.Counter()
    for i in range(iterations):
        run = scenario.run(f"chaos-redis-host-crash-{i}", N, 0.0, SPREAD, seed=600 + i, name=f"run {i}")
        crash = HostCrash(cluster.redis, images)
        offset = rng.uniform(1.0, 2.0)
        ridden = ride_out_redis_fault(
            run, offset, crash.down, DOWN, crash.up,
            f"Redis host lost power {offset:.2f}s after the anchor started (appendfsync {appendfsync}), "
            f"back {DOWN:g}s later")
        cut = crash.cut
        assert cut is not None and cut.restart_image is not None
        s = run.spread
        keys = Keys(s.exp_id, s.run_id)
        at_end, final = scenario.at_end[s.run_id]
        rw = RunWrites(keys, cut.full, cut.boundary, final)
        at_restart = keys_of_image(cut.restart_image, cluster.redis.binary, keys, s.guids)
        states = {g: ("missing" if v.get("state") is None else ResourceState(int(v["state"])).name)
                  for g, v in at_end.rms.items()}
        dropped = writes(cut.dropped)
        dropped_total += len(dropped)
        bytes_total += cut.bytes_lost
        stuck = sum(1 for st in states.values() if st != "FINISHED")
        stuck_total += stuck
        twice = sum(1 for n in collections.Counter((e.guid, e.action) for e in ridden.outcome.entries
                                                   if e.kind == "effect").values() if n > 1)
        twice_total += twice
        kinds = ", ".join(f"{k}={v}" for k, v in rw.dropped_kinds.most_common())
        print(f"  {run.name}: the power loss cut {cut.bytes_lost} bytes ({len(dropped)} writes, of this run: "
              f"{kinds or 'none'}); {ridden.outcome.counts(recovery=True)} stuck={stuck} effect_twice={twice}",
              flush=True)
        anomalies = explain(run, cut, rw, at_restart, at_end, states)
        causes.update(a.cause for a in anomalies)
        signatures.update(a.signature for a in anomalies)
        by_cause = collections.Counter(a.cause for a in anomalies)
        if anomalies:
            print(f"    causes: {dict(sorted(by_cause.items()))}", flush=True)
        shown = [a for letter in sorted(by_cause) for a in [x for x in anomalies if x.cause == letter][:EXPLAIN]]
        for a in shown:
            print(f"    guid {a.guid} ({a.cause}): {a.signature}", flush=True)
            for line in a.detail:
                print(f"      {line}", flush=True)
        if len(anomalies) > len(shown):
            print(f"    ... and {len(anomalies) - len(shown)} more: " + "; ".join(
                f"guid {a.guid} ({a.cause}) {a.what}" for a in anomalies if a not in shown), flush=True)
    for sig, n in signatures.most_common():
        print(f"  x{n}: {sig}", flush=True)
    for letter, n in sorted(causes.items()):
        print(f"  cause {letter} x{n}: {CAUSES.get(letter, 'not one of the known causes: see its lines above')}",
              flush=True)
    return scenario.end(f"redis-host-crash-{appendfsync}", tolerance_s=REDELIVERY, bytes_cut=bytes_total,
                        dropped_writes=dropped_total, stuck=stuck_total, effect_twice=twice_total,
                        causes=dict(sorted(causes.items())))
