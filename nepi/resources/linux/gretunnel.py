"""NEPI's ``nepi.resources.linux.gretunnel``: re-exports only."""

from nepi_dist.resources.linux import LinuxGRETunnel

__all__ = ["LinuxGRETunnel"]
