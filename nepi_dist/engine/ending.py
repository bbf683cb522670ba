"""How a controller's run ends when its process ends without ``ec.shutdown()``.

An embedded run lives inside its process (its Redis and its worker), so it
cannot go on once the process is gone.  Every controller registers here while
it is open; when the interpreter exits (the script's end, ``sys.exit``, an
uncaught exception, a Ctrl-C), each embedded controller not yet shut down is
released first (its applications stopped) and its Redis stopped.  A second
Ctrl-C during that release stops the machinery at once.  On SIGTERM a process
with no handler of its own exits the same way (a controller installs one
that raises ``SystemExit(143)`` in the main thread).  After a SIGKILL nothing
runs, but the kernel ends the embedded redis-server with its owner
(:func:`nepi_dist.engine.embedded.spawn_owned`).

A run on an external Redis is left alone: it goes on without its controller
(the workers keep it), as the design promises; ``nepi-dist abort`` ends it.

Observers (the ``nepi-dist run`` command) hear of each controller opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nepi_dist.ec import ExperimentController

log = logging.getLogger("nepi_dist.engine.ending")

_LOCK = threading.Lock()
_OPEN: dict[int, ExperimentController] = {}
_OBSERVERS: list[Callable[[ExperimentController], None]] = []
_HOOKED = False


def opened(ec: ExperimentController) -> None:
    """Note an open controller; tell the observers; arm the exit hooks once."""
    with _LOCK:
        _OPEN[id(ec)] = ec
        observers = list(_OBSERVERS)
    _arm(embedded=ec.embedded)
    for observer in observers:
        observer(ec)


def closed(ec: ExperimentController) -> None:
    """Forget a controller whose machinery stopped."""
    with _LOCK:
        _OPEN.pop(id(ec), None)


def open_controllers() -> list[ExperimentController]:
    """Return the controllers of this process not yet shut down, oldest first."""
    with _LOCK:
        return list(_OPEN.values())


def observe(callback: Callable[[ExperimentController], None]) -> Callable[[], None]:
    """Call ``callback(ec)`` for every controller opened from now on; return the undo."""
    with _LOCK:
        _OBSERVERS.append(callback)

    def undo() -> None:
        with _LOCK, contextlib.suppress(ValueError):
            _OBSERVERS.remove(callback)

    return undo


def force_stop(ecs: list[ExperimentController]) -> None:
    """Stop the embedded Redis of ``ecs`` now, waiting for nothing else: the process exits next.

    Not the worker's warm shutdown, which waits for the actions it runs
    (the very release a second Ctrl-C means to cut short).
    """
    for ec in ecs:
        closed(ec)
        server = ec._redis
        if server is not None:
            with contextlib.suppress(Exception):  # forcing: whatever fails, go on with the next
                server.stop()


def release_embedded() -> None:
    """Release every open embedded controller (the exit hook); a Ctrl-C meanwhile forces."""
    ecs = [ec for ec in open_controllers() if ec.embedded]
    if not ecs:
        return
    try:
        for ec in ecs:
            log.warning("run %s/%s was not shut down: releasing it before the process exits", ec.exp_id, ec.run_id)
            ec.shutdown()
    except KeyboardInterrupt:
        log.warning("interrupted again: stopping without releasing")
        force_stop(ecs)
        os._exit(130)  # the worker's threads may be in the middle of a release: do not wait for them
    except Exception as exc:  # the exit hook's boundary: the process ends anyway
        log.error("releasing at exit failed: %s", exc)
        force_stop(ecs)


#: Set once a SIGTERM arrived through :func:`_on_sigterm` (``nepi-dist run`` then exits 143).
terminated = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    terminated.set()
    raise SystemExit(128 + signum)


def _arm(embedded: bool) -> None:
    """Register the exit hook (once); on SIGTERM exit through it when nobody handles SIGTERM."""
    global _HOOKED
    with _LOCK:
        first, _HOOKED = not _HOOKED, True
    if first:
        # Before the interpreter joins its thread pools (concurrent.futures registers there too,
        # earlier, and these run last-registered first): the release needs the worker's threads.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(release_embedded)
        else:  # pragma: no cover - every CPython >= 3.9 has it
            import atexit

            atexit.register(release_embedded)
    if embedded and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
