"""``nepi.execution.ec``: NEPI's controller module, re-exported from nepi_dist."""

from nepi_dist.ec import ECState, ExperimentController
from nepi_dist.engine.failure import FailureManager
from nepi_dist.engine.store import FailureLevel

__all__ = ["ECState", "ExperimentController", "FailureLevel", "FailureManager"]
