"""The ``nepi-dist`` command: run, watch, explain and clean experiments; run and list workers.

One module per command group: :mod:`~nepi_dist.cli.worker` (``worker``,
``workers``), :mod:`~nepi_dist.cli.run` (``run``), :mod:`~nepi_dist.cli.runs`
(``ls``, ``status``, ``logs``, ``watch``, ``abort``, ``clean``),
:mod:`~nepi_dist.cli.results` (``results``, ``plot``), with the live
view in :mod:`~nepi_dist.cli.live` and what they share in :mod:`~nepi_dist.cli.common`.
"""

from __future__ import annotations

import importlib.metadata
from typing import Annotated

import typer

from nepi_dist.cli import results as results_group
from nepi_dist.cli import run as run_group
from nepi_dist.cli import runs as runs_group
from nepi_dist.cli import worker as worker_group

app = typer.Typer(
    name="nepi-dist",
    help="NEPI's experiment controller on Celery workers, with the shared state in Redis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"nepi-dist {importlib.metadata.version('nepi-dist')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """NEPI's experiment controller on Celery workers, with the shared state in Redis."""


worker_group.register(app)
app.command("run", help=run_group.run.__doc__,
            context_settings={"allow_interspersed_args": False})(run_group.run)
runs_group.register(app)
results_group.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the command with ``argv`` (default: the process's); return its exit code."""
    try:
        app(args=argv, prog_name="nepi-dist", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
