"""The one place Redis key names are built.

All keys of one run share the prefix ``nepi:{<exp_id>:<run_id>}:`` whose
``{…}`` hash tag puts them in one Redis Cluster slot, so every Lua script
touches one slot only.  Key shapes of a run (``P`` is the prefix):

========================  =====  =================================================
``P:run``                 hash   run fields: ``fl`` failure level, ``drop`` 1 once
                                 the whole run is being released, ``released``
                                 Redis time the whole run was released (its keys
                                 then expire), ``revoked`` 1 once an abort dropped
                                 the pending actions, ``reg`` the last registration
                                 (``<token>:<guid>``), ``seq`` and ``groups`` id
                                 counters, ``ldir`` the controller's local_dir,
                                 ``g:<rtype>:<name>`` global attribute values (JSON),
                                 ``params`` the experiment file's parameter values (JSON)
``P:guids``               zset   every guid of the run (score = guid)
``P:rm:<guid>``           hash   ``rtype``, ``state``, ``t<state>`` Redis-clock
                                 timestamps, ``grp`` deployment group, ``cond``
                                 conditions (JSON), ``a:<name>`` attribute values
                                 (JSON), ``tr:<name>`` enabled traces, ``p:<name>``
                                 RM-internal values (JSON), ``err`` failure text, ``label`` the
                                 name an experiment file gave it,
                                 ``tx`` tokens of its last transitions
``P:conn:<guid>``         set    guids connected to ``guid``
``P:wait:<guid>``         zset   actions parked until ``guid`` reaches a state
                                 (score = the state waited for)
``P:grp:<gid>``           hash   ``pending``: members not yet READY
``P:grpstart:<gid>``      set    members whose start is released with the group
``P:pending``             zset   action ids published and not yet claimed (score = due)
``P:running``             hash   action id -> worker id, while the action runs
``P:timers``              zset   actions due beyond the ETA horizon (score = due)
``P:outbox``              hash   action id -> payload, decided but maybe not published
``P:sent``                hash   action id -> payload, published and not yet claimed
                                 (re-sent by a keeper when its message was lost)
``P:publishing``          string a publisher is emptying the outbox (expires)
``P:keeper``              string the worker keeping the run's timers, outbox and
                                 abort (a lease: expires unless renewed)
``P:task:<aid>``          hash   tracked task ``s`` status and ``r`` result
``P:events``              stream every state change: ``g`` guid, ``s`` state, ``t`` time
``P:alarm``               list   pushed when a critical resource fails
``P:reply:<rid>``         list   the answer of a read run by another host's worker
                                 (JSON, expires)
``P:seen``                set    nonces of the signed messages that ran to their end
                                 (a replay of one is refused, see engine/signing.py)
========================  =====  =================================================

Keys shared by all runs (outside any run's slot):

``nepi:worker:<worker_id>``  string  a live worker's heartbeat (JSON, with TTL)
``nepi:watch``               hash    ``<exp_id>|<run_id>|<guid>`` -> running application
                                     watched by a worker (JSON with its ``holder``)
``nepi:runs``                zset    ``<exp_id>|<run_id>`` of every run not yet released
                                     (score = Redis time it was created): what keepers keep
"""

from __future__ import annotations

import re

from nepi_dist.errors import ExperimentIdError

ROOT = "nepi"
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is safe inside a key, else raise ExperimentIdError."""
    if not isinstance(value, str) or not _SAFE.match(value):
        raise ExperimentIdError(
            f"{kind} {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    return value


class Keys:
    """Builds every key of one run; see the module docstring for the shapes."""

    __slots__ = ("exp_id", "prefix", "run_id")

    def __init__(self, exp_id: str, run_id: str) -> None:
        self.exp_id = check_id("exp_id", exp_id)
        self.run_id = check_id("run_id", run_id)
        self.prefix = f"{ROOT}:{{{exp_id}:{run_id}}}"

    def key(self, *parts: object) -> str:
        """Return ``prefix:part1:part2…``, the one format of every run key."""
        return ":".join((self.prefix, *(str(p) for p in parts)))

    @property
    def run(self) -> str:
        return self.key("run")

    @property
    def guids(self) -> str:
        return self.key("guids")

    def rm(self, guid: int) -> str:
        return self.key("rm", guid)

    def conn(self, guid: int) -> str:
        return self.key("conn", guid)

    def wait(self, guid: int) -> str:
        return self.key("wait", guid)

    def group(self, gid: int) -> str:
        return self.key("grp", gid)

    def group_start(self, gid: int) -> str:
        return self.key("grpstart", gid)

    @property
    def pending(self) -> str:
        return self.key("pending")

    @property
    def running(self) -> str:
        return self.key("running")

    @property
    def timers(self) -> str:
        return self.key("timers")

    @property
    def outbox(self) -> str:
        return self.key("outbox")

    @property
    def sent(self) -> str:
        return self.key("sent")

    @property
    def publishing(self) -> str:
        return self.key("publishing")

    @property
    def keeper(self) -> str:
        return self.key("keeper")

    @property
    def member(self) -> str:
        """This run's member of :data:`RUNS_KEY`."""
        return run_member(self.exp_id, self.run_id)

    def task(self, aid: str) -> str:
        return self.key("task", aid)

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def alarm(self) -> str:
        return self.key("alarm")

    def reply(self, rid: str) -> str:
        return self.key("reply", rid)

    @property
    def seen(self) -> str:
        return self.key("seen")

    def pattern(self) -> str:
        """Return a SCAN pattern matching every key of this run."""
        return self.prefix.replace("{", "\\{").replace("}", "\\}") + ":*"


#: Running applications and the worker watching each (shared by all runs).
WATCH_KEY = f"{ROOT}:watch"
#: The runs not yet released, which the workers' keepers look after (shared by all runs).
RUNS_KEY = f"{ROOT}:runs"


def run_member(exp_id: str, run_id: str) -> str:
    """Return the member of :data:`RUNS_KEY` naming a run ('|' is in no safe id)."""
    return f"{exp_id}|{run_id}"


def parse_run_member(member: str) -> tuple[str, str] | None:
    """Return (exp_id, run_id) of a :data:`RUNS_KEY` member, None when it is not one."""
    exp_id, sep, run_id = member.partition("|")
    if not sep or not _SAFE.match(exp_id) or not _SAFE.match(run_id):
        return None
    return exp_id, run_id


def worker_key(worker_id: str) -> str:
    """Return the heartbeat key of a worker (shared by all runs)."""
    return f"{ROOT}:worker:{worker_id}"


def worker_pattern() -> str:
    """Return the SCAN pattern of every worker heartbeat key."""
    return f"{ROOT}:worker:*"
