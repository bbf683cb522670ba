"""NEPI's ready-made Linux tools as LinuxApplication subclasses.

Each tool declares its command-line options as attributes; at deploy the
command is built from the attributes set, and the package that provides the
binary is added to ``depends``.
"""

from __future__ import annotations

import shlex
from typing import ClassVar

from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.trace import Trace
from nepi_dist.resources.linux.application import LinuxApplication

#: One option: (attribute name, flag, type, help).  Bool options are bare flags.
Option = tuple[str, str, Types, str]


class LinuxTool(LinuxApplication):
    """A LinuxApplication whose command is built from option attributes."""

    _binary: ClassVar[str] = ""
    _package: ClassVar[str] = ""
    _options: ClassVar[list[Option]] = []
    _positional: ClassVar[list[str]] = []

    @classmethod
    def _register_attributes(cls) -> None:
        for name, _flag, type_, help_ in cls._options:
            cls._register_attribute(Attribute(name, help_, type=type_, flags=Flags.ExecReadOnly))
        for name in cls._positional:
            if name not in cls._attributes:
                cls._register_attribute(Attribute(name, f"{name} argument", flags=Flags.ExecReadOnly))

    def build_command(self) -> str:
        parts = [self._binary]
        for name, flag, type_, _ in self._options:
            value = self.get(name)
            if value is None or value is False:
                continue
            parts.append(flag if type_ is Types.Bool else f"{flag} {shlex.quote(str(value))}")
        for name in self._positional:
            value = self.get(name)
            if value:
                parts.append(shlex.quote(str(value)))
        return " ".join(parts)

    def do_provision(self) -> None:
        if not self.get("command"):
            self.set("command", self.build_command())
        if self._package and self.node.missing_commands([self._binary]):
            depends = {*(self.get("depends") or "").split(), self._package}
            self.set("depends", " ".join(sorted(depends)))
        super().do_provision()


class LinuxPing(LinuxTool):
    _rtype = "linux::Ping"
    _aliases = ("LinuxPing",)
    _help = "Runs ping against a target"
    _binary = "ping"
    _package = "iputils-ping"
    _options = [
        ("count", "-c", Types.Integer, "Packets to send"),
        ("interval", "-i", Types.Double, "Seconds between packets"),
        ("deadline", "-w", Types.Integer, "Seconds before ping exits"),
        ("timeout", "-W", Types.Double, "Seconds to wait for each reply"),
        ("packetSize", "-s", Types.Integer, "Payload bytes"),
        ("ttl", "-t", Types.Integer, "IP time to live"),
        ("numeric", "-n", Types.Bool, "No name lookups"),
        ("quiet", "-q", Types.Bool, "Only the summary"),
        ("printTimestamp", "-D", Types.Bool, "Print a timestamp before each line"),
        ("address", "-I", Types.String, "Source address or interface"),
    ]
    _positional = ["target"]


class LinuxTraceroute(LinuxTool):
    _rtype = "linux::Traceroute"
    _aliases = ("LinuxTraceroute",)
    _help = "Runs traceroute towards a target"
    _binary = "traceroute"
    _package = "traceroute"
    _options = [
        ("maxHops", "-m", Types.Integer, "Maximum hops"),
        ("queries", "-q", Types.Integer, "Probes per hop"),
        ("waitTime", "-w", Types.Double, "Seconds to wait for a probe"),
        ("numeric", "-n", Types.Bool, "No name lookups"),
        ("icmp", "-I", Types.Bool, "Use ICMP echo probes"),
    ]
    _positional = ["target"]


class LinuxTcpdump(LinuxTool):
    """Captures packets into the ``pcap`` trace (a file in the run home)."""

    _rtype = "linux::Tcpdump"
    _aliases = ("LinuxTcpdump",)
    _help = "Captures packets with tcpdump"
    _binary = "tcpdump"
    _package = "tcpdump"
    _options = [
        ("interface", "-i", Types.String, "Interface to capture on"),
        ("count", "-c", Types.Integer, "Packets to capture before exiting"),
        ("snaplen", "-s", Types.Integer, "Bytes captured per packet"),
        ("numeric", "-n", Types.Bool, "No name lookups"),
        ("pcapFile", "-w", Types.String, "File written in the run home (the pcap trace)"),
    ]
    _positional = ["filter"]

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("pcap", "The capture file"))

    def build_command(self) -> str:
        if not self.get("pcapFile"):
            self.set("pcapFile", "pcap")
        return "exec " + super().build_command()


class LinuxUdpTest(LinuxTool):
    """A throughput test with iperf3: server mode, or a client towards ``target``."""

    _rtype = "linux::UdpTest"
    _aliases = ("LinuxUdpTest",)
    _help = "Measures UDP throughput with iperf3"
    _binary = "iperf3"
    _package = "iperf3"
    _options = [
        ("server", "-s", Types.Bool, "Run as server"),
        ("oneOff", "-1", Types.Bool, "Server handles one client, then exits"),
        ("port", "-p", Types.Integer, "Port"),
        ("target", "-c", Types.String, "Server to connect to (client mode)"),
        ("udp", "-u", Types.Bool, "UDP instead of TCP"),
        ("bandwidth", "-b", Types.String, "Target bandwidth, e.g. 10M"),
        ("duration", "-t", Types.Integer, "Seconds to transmit"),
        ("json", "-J", Types.Bool, "JSON output"),
    ]
