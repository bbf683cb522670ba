"""NEPI's ``nepi.resources.linux.tap``: re-exports only."""

from nepi_dist.resources.linux import LinuxTap

__all__ = ["LinuxTap"]
