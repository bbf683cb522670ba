"""NEPI's ``nepi.resources.linux.udptunnel``: re-exports only."""

from nepi_dist.resources.linux import LinuxUdpTunnel

__all__ = ["LinuxUdpTunnel"]
