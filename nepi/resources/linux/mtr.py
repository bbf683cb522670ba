"""NEPI's ``nepi.resources.linux.mtr``: re-exports only."""

from nepi_dist.resources.linux import LinuxMtr

__all__ = ["LinuxMtr"]
