"""``nepi-dist run EXPERIMENT``: run a NEPI-style script or an experiment file, live.

A ``.py`` argument runs in this process (``runpy``, as ``__main__``, with
``sys.argv`` = the script and its arguments): every ExperimentController it
opens is followed by the live view (:mod:`nepi_dist.cli.live`).  A
``.yaml``/``.yml``/``.json`` argument is an experiment file (issue 10's
``nepi_dist.experiment``): read, built with its parameters, deployed, waited
for and released here.

Exit code: 0 when every run ended with failure level OK, 1 when an RM
failure aborted one, 2 for a bad experiment, an EC failure or a script that
raised; 130 after a Ctrl-C.  The first Ctrl-C releases every open run
cleanly (applications stopped, an embedded Redis stopped); a second one
stops at once without waiting.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import math
import os
import re
import runpy
import signal
import statistics
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nepi_dist.cli.common import (
    EXIT_BAD,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RM_FAILURE,
    console,
    err_console,
    fail,
)
from nepi_dist.engine import ending
from nepi_dist.engine.celery_app import REDIS_URL_ENV
from nepi_dist.engine.report import describe, level_name, rows
from nepi_dist.engine.store import FailureLevel
from nepi_dist.model.state import ResourceState

if TYPE_CHECKING:
    from nepi_dist.cli.live import LiveView
    from nepi_dist.ec import ExperimentController

#: Resource types that never finish by themselves: a file run does not wait for them by default.
_NEVER_FINISH = frozenset({"linux::Node", "Collector"})
#: The exit code after a SIGTERM (128 + 15), as a shell reports it.
EXIT_TERMINATED = 143
FILE_SUFFIXES = (".yaml", ".yml", ".json", ".xml")


class Detached(BaseException):
    """Raised in a script right after its first deploy with ``--detach``: the run goes on without it."""


class Interrupts:
    """SIGINT while a run is on: the first raises KeyboardInterrupt (a clean release follows),
    the second stops every open controller's machinery at once and exits 130."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def __enter__(self) -> Interrupts:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        open_now = ending.open_controllers()
        err_console.print(f"[bold red]interrupted again: stopping {len(open_now)} controller(s) without "
                          "waiting for the release[/]")
        ending.force_stop(open_now)
        os._exit(EXIT_INTERRUPTED)


def _exit_code(levels: list[int]) -> int:
    if any(level == FailureLevel.EC_FAILURE for level in levels):
        return EXIT_BAD
    if any(level == FailureLevel.RM_FAILURE for level in levels):
        return EXIT_RM_FAILURE
    return EXIT_OK


def run(
    experiment: Annotated[Path, typer.Argument(help="A NEPI-style Python script (.py) or an experiment file "
                                               "(.yaml, .yml, .json).", exists=True, dir_okay=False)],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments of a script (after --).")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="NAME=VALUE: a parameter the experiment file declares (repeatable).")] = None,
    runs: Annotated[int, typer.Option(help="Runs of an experiment file, one after the other (with "
                                      "--until-converged: at most this many).", min=1)] = 1,
    until_converged: Annotated[bool, typer.Option(
        "--until-converged", help="Run an experiment file again (a new run_id of one exp_id) until its metric "
        "converges, by NEPI's ExperimentRunner rule: twice the standard error at most 5% of the mean. At least "
        "--min-runs runs, at most --runs (default 20).")] = False,
    min_runs: Annotated[int, typer.Option("--min-runs", help="With --until-converged: runs made before "
                                          "convergence is asked about.", min=2)] = 3,
    metric: Annotated[str | None, typer.Option(
        help="With --until-converged: LABEL.TRACE:REGEX, the mean of the numbers REGEX's first group finds in "
        "that resource's trace (e.g. 'ping.stdout:time=([0-9.]+)'); default: the run's duration, from the first "
        "start to the last finish of the resources waited for.")] = None,
    sweep: Annotated[bool, typer.Option(help="One run per point of the file's sweep block (the cartesian product "
                                        "of its values), all of one exp_id; on an external Redis, a relaunch "
                                        "skips the points whose run ended OK already.")] = False,
    exp_id: Annotated[str | None, typer.Option("--exp-id", help="The exp_id of an experiment file's runs "
                                               "(default: the file's exp_id).")] = None,
    wait: Annotated[list[str] | None, typer.Option(
        "--wait", help="LABEL of an experiment file's resource whose finish a run waits for (repeatable; default: "
        "every resource but nodes and collectors, which never finish by themselves).")] = None,
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", envvar=REDIS_URL_ENV, show_envvar=True,
        help="Run on this Redis and its external workers (default: the embedded default).")] = None,
    detach: Annotated[bool, typer.Option(help="Deploy, print exp_id and run_id, and return: the run goes on "
                                         "on the external workers (needs a Redis URL).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live view; only what failed, on stderr.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="No live view; a JSON summary of every run on stdout "
                                        "(the script's own output goes to stderr).")] = False,
    svg: Annotated[Path | None, typer.Option(help="Also save the live view's last drawing as an SVG picture.")] = None,
    plot: Annotated[Path | None, typer.Option(help="At the end, draw each run's timeline (as nepi-dist plot) "
                                              "to this .png/.svg/.pdf (the run_id added when several).")] = None,
) -> None:
    """Run an experiment with a live view; exit 0 (OK), 1 (an RM failure aborted a run) or 2 (bad experiment,
    EC failure)."""
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"--plot {plot}: a .png, .svg or .pdf file")
    if detach and not redis_url:
        fail(f"--detach needs --redis-url or ${REDIS_URL_ENV}: an embedded run ends with its process")
    if redis_url:
        os.environ[REDIS_URL_ENV] = redis_url
    is_file = experiment.suffix.lower() in FILE_SUFFIXES
    if not is_file and experiment.suffix.lower() != ".py":
        fail(f"{experiment}: a .py script or an experiment file ({', '.join(FILE_SUFFIXES)})")
    if is_file and args:
        fail("arguments after the experiment are for a script; an experiment file takes --param NAME=VALUE")
    if not is_file and (param or runs != 1 or exp_id or sweep or wait or until_converged or metric):
        fail("--param, --runs, --sweep, --wait, --exp-id, --until-converged and --metric are for experiment "
             "files; a script takes its own arguments")
    if metric is not None and not until_converged:
        fail("--metric is the metric of --until-converged")
    convergence = _Convergence(min_runs, runs if runs != 1 else 20, _parse_metric(metric)) if until_converged else None
    if convergence is not None and convergence.max_runs < convergence.min_runs:
        fail(f"--runs {runs} is below --min-runs {min_runs}")
    view = None if (quiet or json_ or detach) else _live_view(svg)
    seen: list[ExperimentController] = []
    outcome = _Outcome()
    with Interrupts():
        try:
            if view is not None:
                view.start()
            if is_file:
                _run_file(experiment, param or [], runs, exp_id, detach, view, seen, outcome, sweep, redis_url,
                          wait or [], convergence)
            else:
                _run_script(experiment, args or [], detach, view, seen, outcome, json_)
        except KeyboardInterrupt:
            outcome.interrupted = True
        finally:
            outcome.interrupted = outcome.interrupted or ending.terminated.is_set()
            if view is not None:
                view.catch_up()
                view.stop()
        if outcome.interrupted:
            _release_all("interrupted: releasing every open run (Ctrl-C again to stop at once)")
        else:
            _release_embedded_left()
    if plot is not None and not detach:
        _plot(seen, plot)
    raise typer.Exit(_report(seen, outcome, detach, quiet, json_))


def _plot(seen: list[ExperimentController], path: Path) -> None:
    """Draw the timeline of every run the experiment opened (from its final snapshot when shut down)."""
    from nepi_dist.cli.results import timeline

    for ec in seen:
        target = path if len(seen) == 1 else path.with_name(f"{path.stem}-{ec.run_id}{path.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        timeline(rows(ec.store), f"{ec.exp_id}/{ec.run_id}").savefig(target)
        err_console.print(f"timeline of {ec.exp_id}/{ec.run_id} in {target}")


class _Outcome:
    def __init__(self) -> None:
        self.interrupted = False
        self.error: str | None = None  # the script's or the file's error
        self.script_code = 0
        self.skipped = 0  # sweep points done already
        self.converged: list[str] = []  # one line per point run --until-converged


def _parse_metric(spec: str | None) -> tuple[str, str, re.Pattern[str]] | None:
    """``LABEL.TRACE:REGEX`` -> (label, trace, compiled regex with one group); None: the run's duration."""
    if spec is None:
        return None
    where, sep, pattern = spec.partition(":")
    label, dot, trace = where.rpartition(".")
    if not sep or not dot or not label or not trace or not pattern:
        fail(f"--metric {spec!r}: LABEL.TRACE:REGEX, e.g. 'ping.stdout:time=([0-9.]+)'")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        fail(f"--metric {spec!r}: the regex does not compile ({exc})")
    if regex.groups != 1:
        fail(f"--metric {spec!r}: the regex has {regex.groups} groups; it needs exactly one, the number")
    return label, trace, regex


class _Convergence:
    """``--until-converged``: one sample per run, and NEPI's ExperimentRunner rule over them."""

    def __init__(self, min_runs: int, max_runs: int, metric: tuple[str, str, re.Pattern[str]] | None) -> None:
        self.min_runs, self.max_runs, self.metric = min_runs, max_runs, metric

    def sample(self, ec: ExperimentController, labels: dict[str, int], waited: list[int]) -> float:
        """The run's metric, read before it is released: a trace's numbers, or its duration."""
        from nepi_dist.errors import RunnerError

        if self.metric is None:
            starts = [t for t in map(ec.get_start_time, waited) if t is not None]
            ends = [t for t in map(ec.get_finish_time, waited) if t is not None]
            if not starts or not ends:
                raise RunnerError("--until-converged: no resource waited for started and finished")
            return max(ends) - min(starts)
        label, trace, regex = self.metric
        if label not in labels:
            raise RunnerError(f"--metric: no resource labelled {label!r} (it has: {', '.join(labels)})")
        text = ec.trace(labels[label], trace) or ""
        numbers = [float(m) for m in regex.findall(text if isinstance(text, str) else text.decode())]
        if not numbers:
            raise RunnerError(f"--metric: {regex.pattern!r} finds no number in {label}.{trace}")
        return statistics.fmean(numbers)

    def converged(self, samples: list[float]) -> bool:
        from nepi_dist.experiment.runner import ExperimentRunner

        return len(samples) >= self.min_runs and ExperimentRunner.evaluate_normal_convergence(
            None, len(samples), samples)  # type: ignore[arg-type]

    def verdict(self, samples: list[float]) -> str:
        mean = statistics.fmean(samples)
        half = 2 * statistics.pstdev(samples) / math.sqrt(len(samples))
        word = "converged after" if self.converged(samples) else "did not converge in"
        return f"{word} {len(samples)} runs: metric {mean:.6g} ± {half:.3g} (95%)"


def _live_view(svg: Path | None) -> LiveView:
    from nepi_dist.cli.live import LiveView

    return LiveView(console, svg=str(svg) if svg else None)


def _observe(view: LiveView | None, seen: list[ExperimentController], detach: bool) -> Any:
    def opened(ec: ExperimentController) -> None:
        seen.append(ec)
        if view is not None:
            view.follow(ec.exp_id, ec.run_id, ec.redis_url)
        if detach:
            deploy = ec.deploy

            def deploy_then_detach(*a: Any, **k: Any) -> Any:
                deploy(*a, **k)
                raise Detached

            ec.deploy = deploy_then_detach  # type: ignore[method-assign]

    return ending.observe(opened)


def _run_script(path: Path, args: list[str], detach: bool, view: LiveView | None,
                seen: list[ExperimentController], outcome: _Outcome, json_: bool) -> None:
    undo = _observe(view, seen, detach)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    out = contextlib.redirect_stdout(sys.stderr) if json_ else contextlib.nullcontext()
    try:
        with out:
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        outcome.script_code = code if isinstance(code, int) else (0 if code is None else 1)
        if code not in (None, 0) and not isinstance(code, int):
            outcome.error = str(code)
    except Detached:
        for ec in seen:
            ec._stop_machinery()  # the run goes on, kept by the external workers
    except Exception:  # the script's boundary: say what it raised, exit 2
        outcome.error = traceback.format_exc()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        undo()


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--param {pair!r}: NAME=VALUE")
        params[name] = value
    return params


def _run_file(path: Path, pairs: list[str], runs: int, exp_id: str | None, detach: bool, view: LiveView | None,
              seen: list[ExperimentController], outcome: _Outcome, sweep: bool = False,
              redis_url: str | None = None, wait: list[str] | None = None,
              convergence: _Convergence | None = None) -> None:
    """Run an experiment file through nepi_dist.experiment (issue 10): read, build, deploy, wait, release.

    With ``sweep``, one run per point of the file's sweep block, all of one exp_id (the file's stem
    unless given); a point whose parameter values (the run's ``params`` field, written by
    ``Experiment.build``) match a released run that ended OK is skipped, like Execo's ParamSweeper.
    With ``convergence``, each point is run again until its metric converges (or its run cap).
    """
    try:
        experiment_api = importlib.import_module("nepi_dist.experiment")
    except ImportError as exc:
        fail(f"{path}: experiment files need nepi_dist.experiment, which this installation lacks ({exc})")
    from nepi_dist.ec import ExperimentController
    from nepi_dist.errors import NepiError

    try:
        experiment = experiment_api.read_experiment(str(path))
    except NepiError as exc:
        fail(str(exc))  # it names the file and the field
    params = _parse_params(pairs)
    unknown = sorted(set(params) - set(experiment.parameters))
    if unknown:
        fail(f"{path} declares no parameter {', '.join(unknown)} (it has: {', '.join(sorted(experiment.parameters))})")
    exp_id = exp_id or getattr(experiment, "exp_id", None)
    points: list[dict[str, Any]] = [{}]
    if sweep:
        points = experiment.points() if hasattr(experiment, "points") else [
            dict(zip(experiment.sweep, combo, strict=True)) for combo in itertools.product(*experiment.sweep.values())]
        exp_id = exp_id or "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem)
    done = _done_points(redis_url, exp_id) if sweep else set()
    undo = _observe(view, seen, detach=False)
    try:
        for point in points:
            values = {**params, **point}
            try:
                key = json.dumps(experiment.resolve(values), sort_keys=True)
            except NepiError as exc:
                fail(str(exc))
            if key in done:
                err_console.print(f"point {key} done already: skipped")
                outcome.skipped += 1
                continue
            samples: list[float] = []
            for _ in range(convergence.max_runs if convergence else runs):
                ec = ExperimentController(exp_id=exp_id)
                exp_id = ec.exp_id
                try:
                    labels = experiment.build(ec, values)
                    missing = sorted(set(wait or []) - set(labels))
                    if missing:
                        fail(f"--wait {', '.join(missing)}: no such resource in {path} "
                             f"(it has: {', '.join(labels)})")
                    guids = [g for label, g in labels.items() if label in wait] if wait else [
                        g for g in labels.values() if ec.get_resource(g).rtype() not in _NEVER_FINISH]
                    ec.deploy()
                    if detach:
                        ec._stop_machinery()  # the run goes on, kept by the external workers
                        return
                    ec.wait_finished(guids)
                    if convergence is not None:
                        samples.append(convergence.sample(ec, labels, guids))
                except NepiError as exc:
                    outcome.error = str(exc)
                    ec.shutdown()
                    return
                ec.shutdown()
                if convergence is not None and convergence.converged(samples):
                    break
            if convergence is not None:
                outcome.converged.append(convergence.verdict(samples))
    finally:
        undo()


def _done_points(redis_url: str | None, exp_id: str | None) -> set[str]:
    """The ``params`` of the released runs of ``exp_id`` that ended OK (none without an external Redis)."""
    if not redis_url or not exp_id:
        return set()
    from nepi_dist.cli.common import connect, find_runs
    from nepi_dist.engine.keys import Keys

    client = connect(redis_url)
    done = set()
    for ref in find_runs(client, exp_id):
        fl, params = client.hmget(Keys(ref.exp_id, ref.run_id).run, ["fl", "params"])
        if ref.released is not None and params and int(fl or FailureLevel.OK) == FailureLevel.OK:
            done.add(json.dumps(json.loads(params), sort_keys=True))
    return done


def _release_all(message: str) -> None:
    left = ending.open_controllers()
    if not left:
        return
    err_console.print(f"[yellow]{message}[/]")
    for ec in left:
        try:
            ec.shutdown()
        except Exception as exc:  # go on releasing the others; the exit code says it failed
            err_console.print(f"[red]release of {ec.exp_id}/{ec.run_id} failed: {exc}[/]")
            ending.force_stop([ec])


def _release_embedded_left() -> None:
    for ec in ending.open_controllers():
        if ec.embedded:
            err_console.print(f"[yellow]run {ec.exp_id}/{ec.run_id} was not shut down by its script: "
                              "releasing it (an embedded run ends with this process)[/]")
            ec.shutdown()
        else:
            err_console.print(f"run {ec.exp_id}/{ec.run_id} goes on, on the external workers: "
                              f"nepi-dist watch {ec.exp_id} {ec.run_id}")
            ec._stop_machinery()


def _report(seen: list[ExperimentController], outcome: _Outcome, detach: bool, quiet: bool, json_: bool) -> int:
    """Say how every run ended and return the exit code."""
    summaries = []
    levels = []
    for ec in seen:
        level = int(ec.failure_level)
        levels.append(level)
        found = rows(ec.store)
        failed = [r for r in found if ResourceState.FAILED in r.times]
        summaries.append({"exp_id": ec.exp_id, "run_id": ec.run_id, "failure_level": level_name(level),
                          "redis_url": ec.redis_url, "resources": [r.as_json() for r in found],
                          "failed": [describe(r) for r in failed]})
    if outcome.interrupted:
        code = EXIT_TERMINATED if ending.terminated.is_set() else EXIT_INTERRUPTED
    elif outcome.error is not None or (not seen and not detach and not outcome.skipped):
        code = EXIT_BAD
    else:
        code = _exit_code(levels)
        if code == EXIT_OK and outcome.script_code:
            code = EXIT_BAD  # the runs were fine, the script itself failed
    if json_:
        print(json.dumps({"exit_code": code, "error": outcome.error, "runs": summaries,
                          **({"convergence": outcome.converged} if outcome.converged else {})}))
        return code
    out = err_console if quiet else console
    if detach:
        for s in summaries:
            print(json.dumps({"exp_id": s["exp_id"], "run_id": s["run_id"], "redis_url": s["redis_url"]}))
        return code
    if outcome.error:
        err_console.print(outcome.error.rstrip(), markup=False)
    if not seen and outcome.error is None:
        err_console.print("the script opened no ExperimentController")
    for s in summaries:
        if s["failed"] or not quiet:
            out.print(f"run {s['exp_id']}/{s['run_id']}: failure level {s['failure_level']}", markup=False)
        for line in s["failed"]:
            out.print(f"  FAILED {line}", markup=False, soft_wrap=True)
    for line in outcome.converged:
        out.print(line, markup=False)
    if outcome.interrupted:
        err_console.print("interrupted: every run released")
    return code
