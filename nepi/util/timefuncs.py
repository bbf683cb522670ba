"""``nepi.util.timefuncs``: NEPI's date helpers, re-exported from nepi_dist."""

from nepi_dist.model.timefuncs import stabsformat, stformat, tdiff, tdiffsec, tnow, tsformat

__all__ = ["stabsformat", "stformat", "tdiff", "tdiffsec", "tnow", "tsformat"]
