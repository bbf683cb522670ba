"""NEPI's Linux resource managers: hosts, applications and the tools built on them."""

from .application import LinuxApplication
from .node import LinuxNode
from .tools import LinuxPing, LinuxTcpdump, LinuxTraceroute, LinuxUdpTest

__all__ = ["LinuxApplication", "LinuxNode", "LinuxPing", "LinuxTcpdump", "LinuxTraceroute", "LinuxUdpTest"]
