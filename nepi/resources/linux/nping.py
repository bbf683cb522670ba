"""NEPI's ``nepi.resources.linux.nping``: re-exports only."""

from nepi_dist.resources.linux import LinuxNPing

__all__ = ["LinuxNPing"]
