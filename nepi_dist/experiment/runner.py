"""ExperimentRunner: run one experiment again and again, each time a new run of the same exp_id.

NEPI's runner: a run deploys, waits for ``wait_guids`` to finish, waits
``wait_time`` more seconds and releases; then ``compute_metric_callback(ec,
run)`` gives the run's sample, and once ``min_runs`` are done
``evaluate_convergence_callback(ec, run, samples)`` says whether to stop.
Without one, NEPI's rule: the samples are taken as normal, and the runner
stops once twice the standard error (the 95% confidence half-width) is at
most 5% of their mean.

Run 1 is the controller given (when nothing of it was deployed yet); each
later run is :meth:`~nepi_dist.ec.ExperimentController.new_run` of the
previous one: a new controller with the same exp_id and settings, a fresh
run_id, and the description copied (same guids, so callbacks holding guids
still name the same RMs).  Every run is saved into its own ``run_dir``
(``persist``, as NEPI forces it), and shut down once its metric is taken.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nepi_dist.errors import ArgumentTypeError, RunnerError, shown
from nepi_dist.model.state import ResourceState

if TYPE_CHECKING:
    from nepi_dist.ec import ExperimentController

MetricCallback = Callable[["ExperimentController", int], Any]
ConvergenceCallback = Callable[["ExperimentController", int, list[Any]], bool]

_LOGGER = logging.getLogger("ExperimentRunner")


def _check_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArgumentTypeError(f"{name} is an int, not {shown(value)}")
    return value


class ExperimentRunner:
    """Re-runs an experiment until ``max_runs`` or until its metric converges (NEPI's ``ExperimentRunner``)."""

    def run(
        self,
        ec: ExperimentController,
        min_runs: int = 1,
        max_runs: int = -1,
        wait_time: float = 0,
        wait_guids: Iterable[int] = (),
        compute_metric_callback: MetricCallback | None = None,
        evaluate_convergence_callback: ConvergenceCallback | None = None,
    ) -> int:
        """Run the experiment described by ``ec``; return how many runs were made.

        :param min_runs: runs made before convergence is asked about.
        :param max_runs: stop after this many runs (-1: only convergence stops).
        :param wait_time: seconds to wait between the wait for ``wait_guids`` and the release.
        :param wait_guids: guids whose finish each run waits for (``ec.wait_finished``).
        :param compute_metric_callback: ``metric = f(ec, run)`` after each run's release
            (None: no sample that run).
        :param evaluate_convergence_callback: ``stop = f(ec, run, samples)``; default
            :meth:`evaluate_normal_convergence` when a metric is computed.
        """
        min_runs, max_runs = _check_int("min_runs", min_runs), _check_int("max_runs", max_runs)
        if isinstance(wait_time, bool) or not isinstance(wait_time, (int, float)) or not wait_time >= 0:
            raise ArgumentTypeError(f"wait_time is a number of seconds >= 0, not {shown(wait_time)}")
        guids = list(wait_guids)
        for name, cb in (("compute_metric_callback", compute_metric_callback),
                         ("evaluate_convergence_callback", evaluate_convergence_callback)):
            if cb is not None and not callable(cb):
                raise ArgumentTypeError(f"{name} is callable or None, not {shown(cb)}")
        if max_runs < 0 and compute_metric_callback is None:
            raise RunnerError("no stop condition: give max_runs, or a compute_metric_callback to converge on")
        if 0 <= max_runs < max(min_runs, 1):
            raise RunnerError(f"max_runs ({max_runs}) is below min_runs ({min_runs}) or 1")
        if compute_metric_callback is not None and evaluate_convergence_callback is None:
            evaluate_convergence_callback = self.evaluate_normal_convergence
            _LOGGER.info("samples taken as normal: the runs stop once the 95%% confidence half-width "
                         "is at most 5%% of their mean")
        current = ec if self._fresh(ec) else ec.new_run()
        samples: list[Any] = []
        run = 0
        while True:
            run += 1
            _LOGGER.info("run %d of %s: run_id %s", run, current.exp_id, current.run_id)
            try:
                self.run_experiment(current, wait_time, guids)
                stop = 0 <= max_runs <= run
                if compute_metric_callback is not None:
                    metric = compute_metric_callback(current, run)
                    if metric is not None:
                        samples.append(metric)
                        if not stop and run >= min_runs and evaluate_convergence_callback is not None:
                            stop = bool(evaluate_convergence_callback(current, run, samples))
            finally:
                current.shutdown()
            if stop:
                return run
            current = current.new_run()  # from the run's final snapshot: its description is all there

    @staticmethod
    def _fresh(ec: ExperimentController) -> bool:
        """True when no RM of ``ec`` left NEW: this run can be the first one."""
        guids = ec.store.guids()
        return not ec.store.frozen and all(s == ResourceState.NEW for s in ec.store.states(guids))

    @staticmethod
    def run_experiment(ec: ExperimentController, wait_time: float, wait_guids: Sequence[int]) -> None:
        """One run: deploy, wait for ``wait_guids`` to finish, wait ``wait_time`` s, release (saving it)."""
        ec._persist = True
        ec.deploy()
        ec.wait_finished(list(wait_guids))
        if wait_time:
            time.sleep(wait_time)
        ec.release()

    @staticmethod
    def evaluate_normal_convergence(ec: ExperimentController, run: int, samples: Sequence[float]) -> bool:
        """NEPI's rule: True once 2 * (standard deviation / sqrt(n)) <= 5% of the mean of the samples."""
        if not samples:
            raise RunnerError("0 samples collected: convergence needs at least one")
        n = len(samples)
        mean = statistics.fmean(samples)
        std = statistics.pstdev(samples)
        se95 = 2 * std / math.sqrt(n)
        _LOGGER.info("run %d - samples %d mean %.2f std %.2f se95%% %.2f", run, n, mean, std, se95)
        return mean * 0.05 >= se95
