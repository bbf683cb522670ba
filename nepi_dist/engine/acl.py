"""The Redis ACL rules of a worker and of a controller: what each needs, nothing more.

Celery documents none of the permissions its workers need (celery#8724);
these were found by running whole experiments (deploy, conditions, a host
worker's traces, an abort that revokes, ``nepi-dist workers``) against users
with only these rules and reading Redis' ``ACL LOG`` until it stayed empty
(tests/test_acl.py runs them).  Keys (``~``, ``%R~`` read-only), channels
(``&``) and commands:

* **nepi_dist's own keys**: every run's ``nepi:{<exp_id>:<run_id>}:*``
  (:mod:`nepi_dist.engine.keys`), and the shared ``nepi:runs``,
  ``nepi:watch`` and ``nepi:worker:*`` (heartbeats).
* **Celery's and kombu's**: the queues (``nepi.pool``, ``nepi.host.<host>``
  and their priority lists ``nepi.pool\\x06\\x163`` ..., all ``nepi.*``);
  the bindings (``_kombu.binding.*``, ``_kombu.binding_permanent.*``); the
  messages a worker holds (``unacked``, ``unacked_index``,
  ``unacked_mutex``); the remote-control queues ``<node>.celery.pidbox``
  and ``<id>.reply.celery.pidbox``; the channels of remote control
  (``/<db>.celery.pidbox``: a revoke) and of the workers' events
  (``/<db>.celeryev/*``: what Flower shows).  Results are not used
  (``task_ignore_result``): no ``celery-task-meta-*``.
* **Commands**: reads and writes of data (``@read``, ``@write``), pub/sub,
  MULTI/EXEC, connection commands, the Lua scripts (EVAL, EVALSHA, SCRIPT
  LOAD/EXISTS), TIME and INFO; nothing ``@dangerous`` (no FLUSHALL, KEYS,
  CONFIG, MONITOR, DEBUG, CLIENT KILL), no FUNCTION, no SCRIPT FLUSH.

A **controller** may be limited to one experiment: ``~nepi:{<exp_id>:*``
(every run of it) instead of ``~nepi:*``, the heartbeats and bindings
read-only, the queues writable (it publishes), and no ``unacked`` or
pidbox queue (it consumes nothing).  It then cannot read or change another
experiment's keys.  SCAN, a command without keys, still lists the names of
all keys.

``python -m nepi_dist.engine.acl worker|controller [EXP_ID]`` prints an
``ACL SETUSER`` line to paste (or an ``--aclfile`` line with ``--file``).
"""

from __future__ import annotations

import sys

from nepi_dist.engine.keys import ROOT, check_id

#: The commands both roles need (after ``-@all``).
COMMANDS = (
    "-@all", "+@read", "+@write", "+@pubsub", "+@transaction", "+@connection", "-@dangerous",
    "+info", "+time", "+eval", "+evalsha", "+script|load", "+script|exists",
)


def worker_rules(db: int = 0) -> list[str]:
    """Return the ACL rules of a worker (every run, every queue) on database ``db``."""
    return [
        "resetkeys", "resetchannels",
        f"~{ROOT}:*", "~nepi.*", "~_kombu.binding*", "~unacked*", "~*.celery.pidbox*",
        f"&/{db}.celery.pidbox", f"&/{db}.celeryev/*",
        *COMMANDS,
    ]


def controller_rules(exp_id: str | None = None, db: int = 0) -> list[str]:
    """Return the ACL rules of a controller: of experiment ``exp_id`` only, or of every one (None)."""
    runs = f"~{ROOT}:{{{check_id('exp_id', exp_id)}:*" if exp_id is not None else f"~{ROOT}:{{*"
    return [
        "resetkeys", "resetchannels",
        runs, f"~{ROOT}:runs", f"%R~{ROOT}:worker:*", "~nepi.*", "%R~_kombu.binding*",
        f"&/{db}.celery.pidbox",
        *COMMANDS,
    ]


def setuser(user: str, password: str, rules: list[str]) -> list[str]:
    """Return the ``ACL SETUSER`` arguments creating ``user`` with ``password`` and ``rules``."""
    return [user, "reset", "on", f">{password}", *rules]


def main(argv: list[str]) -> int:
    """Print the ACL line of a role: ``worker`` or ``controller [EXP_ID]`` (``--file``: aclfile syntax)."""
    file_syntax = "--file" in argv
    args = [a for a in argv if a != "--file"]
    if not args or args[0] not in ("worker", "controller"):
        print("usage: python -m nepi_dist.engine.acl worker|controller [EXP_ID] [--file]", file=sys.stderr)
        return 2
    rules = worker_rules() if args[0] == "worker" else controller_rules(args[1] if len(args) > 1 else None)
    user = f"nepi-{args[0]}"
    words = [user, "on", ">CHANGE-ME", *rules]
    print(("user " if file_syntax else "ACL SETUSER ") + " ".join(words))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
