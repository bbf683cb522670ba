"""NEPI's Linux resource managers: hosts, applications, the tools built on them, and network devices."""

from nepi_dist.resources.linux.application import LinuxApplication
from nepi_dist.resources.linux.channel import LinuxChannel
from nepi_dist.resources.linux.interface import LinuxInterface
from nepi_dist.resources.linux.node import LinuxNode
from nepi_dist.resources.linux.probes import LinuxMtr, LinuxNPing
from nepi_dist.resources.linux.tap import LinuxTap, LinuxTun
from nepi_dist.resources.linux.tools import LinuxPing, LinuxTcpdump, LinuxTraceroute, LinuxUdpTest
from nepi_dist.resources.linux.tunnel import LinuxGRETunnel, LinuxUdpTunnel

__all__ = [
    "LinuxApplication", "LinuxChannel", "LinuxGRETunnel", "LinuxInterface", "LinuxMtr", "LinuxNPing", "LinuxNode",
    "LinuxPing", "LinuxTap", "LinuxTcpdump", "LinuxTraceroute", "LinuxTun", "LinuxUdpTest", "LinuxUdpTunnel",
]
