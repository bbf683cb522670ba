"""NEPI's ``nepi.resources.linux.tunnel``: re-exports only."""

from nepi_dist.resources.linux.tunnel import LinuxTunnel

__all__ = ["LinuxTunnel"]
