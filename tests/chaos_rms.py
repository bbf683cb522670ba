"""RM types of the chaos suite: every execution of their actions is written to a ledger file.

The chaos suite breaks Redis, so it cannot count in Redis what ran: each
action of these RMs appends one JSON line per execution to a ledger file,
outside Redis (``O_APPEND``, one ``write`` per line, so the lines of many
worker processes never interleave).  The file is
``$NEPI_CHAOS_LEDGER/<exp_id>.<run_id>.jsonl``: one per run.

A line is ``{"g": guid, "a": action, "k": kind, "t": Redis-clock time, "pid": pid}``.
``kind`` is ``run`` when an execution of the action's body begins, and
``effect`` right after the state change this execution made (``set_started()``
or ``set_finished()`` returned True: the compare-and-set in Redis moved the RM,
so this execution, and no other, took effect).  Counting ``effect`` lines
tells lost (none) from duplicated (two: the RM went through the same change
twice, e.g. a Redis that lost the first one); ``run`` lines count the bodies
that began.

External workers load this module with ``--rm-module tests.chaos_rms``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nepi_dist import ResourceFactory, ResourceManager, clsinit_copy

#: The environment variable naming the directory of the ledger files.
LEDGER_ENV = "NEPI_CHAOS_LEDGER"
#: Seconds a :class:`ChaosStep` works between ``set_started()`` and ``set_finished()``.
WORK = 0.3


def ledger_path(directory: str | os.PathLike[str], exp_id: str, run_id: str) -> Path:
    """Return the ledger file of one run under ``directory``."""
    return Path(directory) / f"{exp_id}.{run_id}.jsonl"


def record(rm: ResourceManager, action: str, kind: str) -> None:
    """Append one line for ``action`` of ``rm`` to its run's ledger (one ``write``, ``O_APPEND``)."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory:
        raise RuntimeError(f"${LEDGER_ENV} is not set: a chaos RM has no ledger to write to")
    line = json.dumps({"g": rm.guid, "a": action, "k": kind, "t": round(rm.ec.store.now(), 6), "pid": os.getpid()})
    fd = os.open(ledger_path(directory, rm.ec.exp_id, rm.ec.run_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@clsinit_copy
class ChaosStep(ResourceManager):
    """Starts in two steps, as NEPI's own test RMs do: ``set_started()``, work, ``set_finished()``.

    A worker killed during the work leaves the RM STARTED with its start
    half done: the run must carry it to FINISHED, and its side effects (the
    ``effect`` lines) must still happen once each.  A second execution of the
    body (the action carried on after a kill) finds the RM STARTED already:
    ``set_started()`` returns False, so it records no second start.
    """

    _rtype = "ChaosStep"

    def do_start(self) -> None:
        record(self, "start", "run")
        if self.set_started():
            record(self, "start", "effect")
        time.sleep(WORK)
        if self.set_finished():
            record(self, "finish", "effect")


@clsinit_copy
class ChaosCritical(ResourceManager):
    """A critical RM whose start fails (its ``failtrap`` sets FAILED: the run aborts)."""

    _rtype = "ChaosCritical"

    def do_start(self) -> None:
        record(self, "start", "run")
        raise RuntimeError("a critical resource fails on purpose (chaos suite)")


TYPES = [ChaosStep, ChaosCritical]
for _t in TYPES:
    ResourceFactory.register_type(_t)
