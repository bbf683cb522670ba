"""A controller in its own process, for the chaos suite to SIGKILL.

    python -m tests.chaos.controller REDIS_URL EXP_ID N LOW HIGH SEED

Registers an anchor ChaosStep and ``N`` ChaosSteps whose starts wait LOW..HIGH
seconds after the anchor STARTED (:func:`tests.chaos.harness.build_spread`),
deploys them with external workers only (``local_worker=False``; the ETA
horizon comes from ``$NEPI_DIST_ETA_HORIZON``), prints one JSON line (the
run's ids, the anchor, each start's delay, the Redis-clock time of the
deploy) and then waits to be killed.
"""

from __future__ import annotations

import json
import sys
import threading

import tests.chaos_rms  # noqa: F401  (registers the chaos RM types)
from nepi_dist import ExperimentController

from .harness import build_spread


def main(argv: list[str]) -> None:
    url, exp_id, n, low, high, seed = argv
    ec = ExperimentController(exp_id=exp_id, redis_url=url, local_worker=False, nthreads=4)
    spread = build_spread(ec, int(n), float(low), float(high), int(seed))
    deployed = ec.store.now()
    ec.deploy()
    print(json.dumps({"exp_id": ec.exp_id, "run_id": ec.run_id, "anchor": spread.anchor,
                      "delays": {str(g): d for g, d in spread.delays.items()}, "deployed": deployed}), flush=True)
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main(sys.argv[1:])
