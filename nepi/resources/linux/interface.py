"""NEPI's ``nepi.resources.linux.interface``: re-exports only."""

from nepi_dist.resources.linux import LinuxInterface

__all__ = ["LinuxInterface"]
