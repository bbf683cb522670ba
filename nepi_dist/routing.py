"""Which queue an RM action goes to: the one routing rule of nepi_dist.

For now every action goes to the shared pool queue; per-host queues (an RM
connected to a node served by a host worker runs on that host's queue) plug
in here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import RunContext

#: The queue served by every pool worker.
POOL_QUEUE = "nepi.pool"


def queue_for(ctx: RunContext, guid: int) -> str:
    """Return the queue of the worker that must run actions of ``guid``."""
    return POOL_QUEUE
