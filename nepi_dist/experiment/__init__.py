"""Describing and repeating runs: the experiment file (read, build, save) and the runner."""

from nepi_dist.experiment.describe import describe, dump, save_description
from nepi_dist.experiment.file import (
    FORMAT_VERSION,
    Experiment,
    Parameter,
    parse_experiment,
    read_experiment,
    schema,
)
from nepi_dist.experiment.runner import ExperimentRunner

__all__ = [
    "FORMAT_VERSION",
    "Experiment",
    "ExperimentRunner",
    "Parameter",
    "describe",
    "dump",
    "parse_experiment",
    "read_experiment",
    "save_description",
    "schema",
]
