"""NEPI's ``nepi.resources.linux.channel``: re-exports only."""

from nepi_dist.resources.linux import LinuxChannel

__all__ = ["LinuxChannel"]
