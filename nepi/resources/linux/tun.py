"""NEPI's ``nepi.resources.linux.tun``: re-exports only."""

from nepi_dist.resources.linux import LinuxTun

__all__ = ["LinuxTun"]
