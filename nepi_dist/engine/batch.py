"""Actions that travel together: batch messages and the send buffer of a batch.

Celery's cost per message (publish, deliver, reserve, acknowledge) is most of
what a trivial RM action costs.  Actions due at the same moment on the same
queue therefore share messages:

* :func:`batches` cuts what one publisher sends at once (the deploys of one
  ``ec.deploy``, the starts a deployment group releases, a release) into
  messages of up to ``BATCH_MAX`` actions, still spread over at least
  ``BATCH_SPREAD`` messages so that every worker gets a share;
* while a worker runs a batch, the actions its items publish (an RM
  scheduling its own next step, the wake-ups of its transitions) collect in a
  :class:`SendBuffer`, recorded in the run's outbox first, and the batch
  publishes them together at most ``FLUSH_AFTER`` seconds later.

Each action keeps its own id and claim, so a batch delivered twice, or
re-sent from the outbox after its worker died, still runs each action once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from nepi_dist.engine.store import Dispatch

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext

#: The Celery task that runs several RM actions due together on one queue.
BATCH_TASK = "nepi.batch"
#: Most actions one batch message carries.
BATCH_MAX = 32
#: Actions due together are spread over at least this many messages (when there are as many).
BATCH_SPREAD = 32
#: What a batch's own sends are spread over: they come from one worker, already a share.
BUFFER_SPREAD = 4
#: Seconds a batch's send buffer holds an action before publishing it.
FLUSH_AFTER = 0.002


def batches(
    items: Sequence[Dispatch], route: Callable[[int], str], spread: int = BATCH_SPREAD
) -> Iterator[tuple[str, float, list[Dispatch]]]:
    """Split actions into (queue, due, chunk) messages.

    Actions with the same queue and due time share messages of up to
    ``BATCH_MAX`` actions, sized so that a group of n still makes at least
    ``min(n, spread)`` messages for the workers to share; fewer than
    ``2 * spread`` actions travel one per message.  Messages come earliest
    due first: publishing a thousand woken actions takes a while, and those
    due soonest must not wait behind the others.
    """
    groups: dict[tuple[str, float], list[Dispatch]] = {}
    for item in items:
        groups.setdefault((route(int(item[1]["g"])), item[2]), []).append(item)
    for (queue, due), members in sorted(groups.items(), key=lambda group: group[0][1]):
        size = max(1, min(BATCH_MAX, len(members) // spread))
        for i in range(0, len(members), size):
            yield queue, due, members[i:i + size]


class SendBuffer:
    """The actions a running batch's items publish, waiting to travel together.

    Items add to it from their own threads (after recording the actions in
    the outbox); the batch's thread publishes what it holds once the oldest
    entry is ``FLUSH_AFTER`` old or every item is done.
    """

    def __init__(self, ctx: RunContext, running: int) -> None:
        self.ctx = ctx
        self._cond = threading.Condition()
        self._items: list[Dispatch] = []
        self._since = 0.0
        self._running = running

    def add(self, items: Sequence[Dispatch]) -> None:
        with self._cond:
            if not self._items:
                self._since = time.monotonic()
            self._items.extend(items)
            self._cond.notify()

    def item_done(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify()

    def drain(self) -> Iterator[list[Dispatch]]:
        """Yield what to publish, as it comes due, until every item is done and all is yielded."""
        with self._cond:
            while True:
                if self._items:
                    wait = self._since + FLUSH_AFTER - time.monotonic()
                    if wait <= 0 or self._running <= 0:
                        items, self._items = self._items, []
                        self._cond.release()
                        try:
                            yield items
                        finally:
                            self._cond.acquire()
                        continue
                    self._cond.wait(wait)
                elif self._running <= 0:
                    return
                else:
                    self._cond.wait()


_LOCAL = threading.local()


def current_buffer(ctx: RunContext) -> SendBuffer | None:
    """Return the send buffer of the batch this thread runs an action of, for ``ctx``'s run."""
    buffer: SendBuffer | None = getattr(_LOCAL, "buffer", None)
    return buffer if buffer is not None and buffer.ctx is ctx else None


def run_in_buffer(buffer: SendBuffer, action: Callable[[], str]) -> str:
    """Run one item of a batch with its sends going to ``buffer``."""
    _LOCAL.buffer = buffer
    try:
        return action()
    finally:
        _LOCAL.buffer = None
        buffer.item_done()
