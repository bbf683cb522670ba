"""NEPI's ``nepi.execution.runner``: the ExperimentRunner of nepi_dist."""

from nepi_dist.experiment.runner import ExperimentRunner

__all__ = ["ExperimentRunner"]
