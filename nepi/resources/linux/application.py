"""``nepi.resources.linux.application``: NEPI's LinuxApplication (rtype ``LinuxApplication``), re-exported."""

from nepi_dist.resources.linux.application import LinuxApplication

__all__ = ["LinuxApplication"]
