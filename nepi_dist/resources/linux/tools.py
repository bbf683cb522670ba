"""NEPI's ready-made Linux tools as LinuxApplication subclasses.

Each tool declares its command-line options as attributes, under NEPI's names
(``count``, tcpdump's one-letter ``i w s n``, ...), our clearer names staying
as aliases of the same attribute (``interface`` is tcpdump's ``i``).  At deploy
the command is built from the attributes set, in NEPI's order, and the package
that provides the binary is added to ``depends`` when the binary is missing.

Two NEPI habits are kept: ``printTimestamp`` prints the date
(``YYYYmmddHHMMSS``) on a line of its own before the tool runs, and
``continuous`` runs the tool again and again until the application is stopped.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
from collections.abc import Sequence
from typing import Any, ClassVar

from nepi_dist.errors import AttributeValueError, shown
from nepi_dist.model.attribute import Attribute, Coerce, Flags, Types
from nepi_dist.model.trace import Trace, TraceAttr
from nepi_dist.resources.linux.application import LinuxApplication


def as_text(value: Any) -> Any:
    """A number given to a String option becomes its text (NEPI took any value: ``tos=16``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option of a tool, declared as one attribute.

    ``flag`` is what goes on the command line (a Bool option is a bare flag,
    any other is ``flag value``); an empty flag means the tool places the value
    itself.  ``mode`` limits the option to ``"client"`` or ``"server"`` runs.
    """

    name: str
    flag: str
    type: Types = Types.String
    help: str = ""
    aliases: tuple[str, ...] = ()
    default: Any = None
    allowed: Sequence[Any] | None = None
    coerce: Coerce | None = None
    unsupported: str | None = None
    mode: str | None = None


#: Options every tool shares with NEPI's: handled by :meth:`LinuxTool._wrap`, not as flags.
TIMESTAMP = Option("printTimestamp", "", Types.Bool, "Print the date (YYYYmmddHHMMSS) before the tool runs",
                   default=False)
CONTINUOUS = Option("continuous", "", Types.Bool, "Run the tool again and again until stopped", default=False)


class LinuxTool(LinuxApplication):
    """A LinuxApplication whose command is built from option attributes."""

    _binary: ClassVar[str] = ""
    _package: ClassVar[str] = ""
    _options: ClassVar[list[Option]] = []
    #: Attributes whose values follow the options, without a flag, in this order.
    _positional: ClassVar[list[str]] = []
    #: Seconds between two runs of a ``continuous`` tool (NEPI's traceroute waits 2 s).
    _loop_pause: ClassVar[float] = 0.0

    @classmethod
    def _register_attributes(cls) -> None:
        for opt in cls._options:
            cls._register_attribute(Attribute(
                opt.name, opt.help, type=opt.type, flags=Flags.ExecReadOnly, default=opt.default,
                allowed=opt.allowed, aliases=opt.aliases, coerce=opt.coerce, unsupported=opt.unsupported,
            ))
        for name in cls._positional:
            if name not in cls._attributes:
                cls._register_attribute(Attribute(name, f"{name} argument", flags=Flags.ExecReadOnly))

    def _mode(self) -> str:
        """Which options apply: ``client`` or ``server`` (tools without modes: ``client``)."""
        return "client"

    def _flag_value(self, opt: Option, value: Any) -> str:
        """The command-line text of ``opt`` set to ``value`` (tools map some values).

        A whole Double is written as an integer (``-W 2``, not ``-W 2.0``, which older tools refuse).
        """
        if opt.type is Types.Bool:
            return opt.flag
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return f"{opt.flag} {shlex.quote(str(value))}"

    def tool_command(self) -> str:
        """The tool's own command line: binary, flags in declaration order, positional values."""
        parts = [self._binary]
        mode = self._mode()
        for opt in self._options:
            if not opt.flag or (opt.mode is not None and opt.mode != mode):
                continue
            value = self.get(opt.name)
            if value is None or value is False or value == "":
                continue
            parts.append(self._flag_value(opt, value))
        for name in self._positional:
            value = self.get(name)
            if value:
                parts.append(shlex.quote(str(value)))
        return " ".join(parts)

    def _wrap(self, command: str) -> str:
        """Add NEPI's date line and loop around the tool's command, where declared and set."""
        declared = {opt.name for opt in self._options}
        if "printTimestamp" in declared and self.get("printTimestamp"):
            command = f"date +%Y%m%d%H%M%S; {command}"
        if "continuous" in declared and self.get("continuous"):
            pause = f"; sleep {self._loop_pause:g}" if self._loop_pause else ""
            command = f"while true; do {command}{pause}; done"
        return command

    def build_command(self) -> str:
        return self._wrap(self.tool_command())

    def do_provision(self) -> None:
        if not self.get("command"):
            self.set("command", self.build_command())
        if self._package and self.node.missing_commands([self._binary]):
            self._add_depends(self._package)
        super().do_provision()


class LinuxPing(LinuxTool):
    """ping with every option NEPI's LinuxPing declared, in NEPI's order."""

    _rtype = "linux::Ping"
    _aliases = ("LinuxPing",)
    _help = "Runs ping against a target"
    _binary = "ping"
    _package = "iputils-ping"
    _options = [
        TIMESTAMP,
        Option("count", "-c", Types.Integer, "ECHO_REQUEST packets to send before stopping"),
        Option("mark", "-m", Types.Integer, "Tag outgoing packets with this mark"),
        Option("interval", "-i", Types.Double, "Seconds between packets"),
        Option("address", "-I", Types.String, "Source address or interface", coerce=as_text),
        Option("preload", "-l", Types.Integer, "Packets sent without waiting for a reply"),
        Option("numeric", "-n", Types.Bool, "No name lookups", default=False),
        Option("pattern", "-p", Types.String, "Up to 16 pad bytes (hex) filling the packets", coerce=as_text),
        Option("tos", "-Q", Types.String, "Quality of Service bits (decimal or hex)", coerce=as_text),
        Option("quiet", "-q", Types.Bool, "Only the summary", default=False),
        Option("recordRoute", "-R", Types.Bool, "Record the route (RECORD_ROUTE)", default=False),
        Option("routeBypass", "-r", Types.Bool, "Bypass the routing tables", default=False),
        Option("packetSize", "-s", Types.Integer, "Data bytes per packet (56 by default)"),
        Option("sendBuff", "-S", Types.Integer, "Socket send buffer"),
        Option("ttl", "-t", Types.Integer, "IP time to live"),
        Option("timestamp", "-T", Types.String, "IP timestamp option (tsonly, tsandaddr, tsprespec ...)",
               coerce=as_text),
        Option("hint", "-M", Types.String, "Path MTU discovery strategy (do, want, dont, probe)", coerce=as_text),
        Option("fullLatency", "-U", Types.Bool, "Full user-to-user latency", default=False),
        Option("verbose", "-v", Types.Bool, "Verbose output", default=False),
        Option("flood", "-f", Types.Bool, "Flood ping", default=False),
        Option("deadline", "-w", Types.Integer, "Seconds before ping exits"),
        Option("timeout", "-W", Types.Double, "Seconds to wait for each reply"),
        Option("earlyStart", "", Types.Bool, "Start ping as soon as it is deployed, before the others "
               "of its deployment group are READY and whatever its start conditions", default=False),
    ]
    _positional = ["target"]

    def _starts_at_deploy(self) -> bool:
        return bool(self.get("earlyStart"))


class LinuxTraceroute(LinuxTool):
    """traceroute towards ``target``: NEPI's ``continuous``, ``printTimestamp`` and ``useIP``, and a
    few traceroute options of ours."""

    _rtype = "linux::Traceroute"
    _aliases = ("LinuxTraceroute",)
    _help = "Runs traceroute towards a target"
    _binary = "traceroute"
    _package = "traceroute"
    _loop_pause = 2.0
    _options = [
        CONTINUOUS,
        TIMESTAMP,
        Option("useIP", "", Types.Bool, "Resolve the target to its IP address at deploy (on the worker)",
               default=False),
        Option("maxHops", "-m", Types.Integer, "Maximum hops"),
        Option("queries", "-q", Types.Integer, "Probes per hop"),
        Option("waitTime", "-w", Types.Double, "Seconds to wait for a probe"),
        Option("numeric", "-n", Types.Bool, "No name lookups"),
        Option("icmp", "-I", Types.Bool, "Use ICMP echo probes"),
    ]
    _positional = ["target"]

    def tool_command(self) -> str:
        target = self.get("target")
        if self.get("useIP") and target:
            try:
                self.set("target", socket.gethostbyname(target))
            except OSError as exc:
                raise RuntimeError(f"useIP: cannot resolve target {target!r}: {exc}") from None
        return super().tool_command()


def _pcap_name(value: Any) -> Any:
    """NEPI declared tcpdump's ``w`` a Bool but wrote its value as the file name: True means ``pcap``."""
    if value is True:
        return "pcap"
    if value is False:
        return None
    return value


class LinuxTcpdump(LinuxTool):
    """tcpdump with every option NEPI's LinuxTcpdump declared (one letter each, as tcpdump's own).

    As NEPI's, it prints what it captures to ``stdout`` unless ``w`` names a
    file; the ``pcap`` trace is that file.
    """

    _rtype = "linux::Tcpdump"
    _aliases = ("LinuxTcpdump",)
    _help = "Captures packets with tcpdump"
    _binary = "tcpdump"
    _package = "tcpdump"
    _options = [
        Option("A", "-A", Types.Bool, "Print each packet in ASCII", default=False),
        Option("b", "-b", Types.Bool, "BGP AS numbers in ASDOT notation", default=False),
        Option("B", "-B", Types.Integer, "Capture buffer size (KiB)"),
        Option("c", "-c", Types.Integer, "Exit after receiving this many packets", aliases=("count",)),
        Option("C", "-C", Types.Integer, "Start a new savefile past this size (millions of bytes)"),
        Option("d", "-d", Types.Bool, "Dump the compiled matching code, then stop", default=False),
        Option("dd", "-dd", Types.Bool, "Dump the matching code as a C fragment", default=False),
        Option("ddd", "-ddd", Types.Bool, "Dump the matching code as decimal numbers", default=False),
        Option("D", "-D", Types.Bool, "List the interfaces tcpdump can capture on", default=False),
        Option("e", "-e", Types.Bool, "Print the link-level header", default=False),
        Option("F", "-F", Types.String, "File holding the filter expression"),
        Option("G", "-G", Types.Integer, "Rotate the -w file every this many seconds"),
        Option("i", "-i", Types.String, "Interface to capture on", aliases=("interface",)),
        Option("I", "-I", Types.Bool, "Monitor mode (Wi-Fi)", default=False),
        Option("j", "-j", Types.String, "Time stamp type"),
        Option("K", "-K", Types.Bool, "Do not verify checksums", default=False),
        Option("l", "-l", Types.Bool, "Line-buffered stdout", default=False),
        Option("U", "-U", Types.Bool, "Packet-buffered output", default=False),
        Option("n", "-n", Types.Bool, "No name lookups", default=False, aliases=("numeric",)),
        Option("N", "-N", Types.Bool, "No domain qualification of host names", default=False),
        Option("S", "-S", Types.Bool, "Absolute TCP sequence numbers", default=False),
        Option("s", "-s", Types.Integer, "Bytes captured per packet", aliases=("snaplen",)),
        Option("T", "-T", Types.String, "Interpret the selected packets as this type (rtp, snmp ...)"),
        Option("t", "-t", Types.Bool, "No timestamp on each line", default=False),
        Option("tt", "-tt", Types.Bool, "Unformatted timestamps", default=False),
        Option("ttt", "-ttt", Types.Bool, "Delta to the previous line", default=False),
        Option("tttt", "-tttt", Types.Bool, "Date and time on each line", default=False),
        Option("ttttt", "-ttttt", Types.Bool, "Delta to the first line", default=False),
        Option("v", "-v", Types.Bool, "Verbose", default=False),
        Option("vv", "-vv", Types.Bool, "More verbose", default=False),
        Option("vvv", "-vvv", Types.Bool, "Most verbose", default=False),
        Option("w", "-w", Types.String, "File of the run home the raw packets are written to (the pcap "
               "trace); True: 'pcap'", aliases=("pcapFile",), coerce=_pcap_name),
    ]
    _positional = ["expression"]

    @classmethod
    def _register_attributes(cls) -> None:
        super()._register_attributes()
        cls._register_attribute(Attribute("expression", "Which packets are captured (a pcap filter)",
                                          flags=Flags.ExecReadOnly, aliases=("filter",)))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("pcap", "The capture file (the file w names)"))

    def build_command(self) -> str:
        # exec: the shell becomes tcpdump, which then gets the stop's signal itself and flushes its file.
        return "exec " + super().build_command()

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512, offset: int = 0) -> Any:
        if name == "pcap":
            self._trace_declared(name)
            name = self.get("w") or "pcap"
        return super().trace(name, attr, block, offset)


#: NEPI's udptest TOS classes (``q``) as the TOS byte iperf3's ``-S`` takes.
#: iperf3's port when ``p`` is not set; how long a server's deploy waits for it to listen (s).
IPERF3_PORT = 5201
LISTEN_WAIT = 10.0

_TOS = {"1": "0x10", "2": "0x08", "3": "0x28", "4": "0x38", "5": "0x88", "6": "0x98"}

_NO_IPERF3 = "NEPI's udptest came from hpcbench; nepi_dist runs iperf3, which has no {what}"


def _unsupported(what: str) -> str:
    return _NO_IPERF3.format(what=what)


def _positive_megabits(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        raise AttributeValueError(f"attribute 'T': a throughput is > 0 Mbit/s, not {shown(value)}")
    return value


class LinuxUdpTest(LinuxTool):
    """A UDP throughput test with iperf3, under NEPI's (hpcbench udptest) option names.

    ``s``: a server, launched at deploy as NEPI's was, so that it listens
    before any client starts; otherwise a client towards ``target``.  NEPI's
    options with an iperf3 equivalent map to it; the others refuse a value
    (:class:`~nepi_dist.errors.UnsupportedAttributeError`).
    """

    _rtype = "linux::UdpTest"
    _aliases = ("LinuxUdpTest",)
    _help = "Measures UDP throughput with iperf3"
    _binary = "iperf3"
    _package = "iperf3"
    _options = [
        CONTINUOUS,
        TIMESTAMP,
        Option("s", "-s", Types.Bool, "Run as server", default=False, aliases=("server",)),
        Option("oneOff", "-1", Types.Bool, "Server handles one client, then exits", mode="server"),
        Option("p", "-p", Types.Integer, "Port to listen on or connect to", aliases=("port",)),
        Option("target", "-c", Types.String, "Server to connect to (client mode)", mode="client"),
        Option("udp", "-u", Types.Bool, "UDP (NEPI's udptest is UDP only); False: TCP", default=True,
               mode="client"),
        Option("a", "", Types.Bool, "UDP round-trip time test", unsupported=_unsupported("round-trip test")),
        Option("A", "", Types.Integer, "Message size of the RTT test", unsupported=_unsupported("round-trip test")),
        Option("b", "-w", Types.Integer, "Client UDP buffer size in bytes (iperf3 -w)", mode="client"),
        Option("B", "", Types.Integer, "Server UDP buffer size",
               unsupported=_unsupported("separate server buffer size: b sets both ends")),
        Option("c", "", Types.Bool, "CPU log", unsupported=_unsupported("CPU log")),
        Option("d", "", Types.Integer, "Data size of each read/write",
               unsupported=_unsupported("read/write size apart from the datagram size: use l")),
        Option("e", "", Types.Bool, "Exponential test", unsupported=_unsupported("exponential test")),
        Option("g", "", Types.Bool, "Traffic generator without a server",
               unsupported=_unsupported("mode without a server")),
        Option("i", "--bidir", Types.Bool, "Bidirectional test", mode="client"),
        Option("l", "-l", Types.Integer, "UDP datagram size in bytes", mode="client"),
        Option("m", "-n", Types.Integer, "Total bytes to send (iperf3 -n)", mode="client"),
        Option("o", "--logfile", Types.String, "Output file, in the run home (a trace by that name)"),
        Option("P", "", Types.Bool, "gnuplot plot file", unsupported=_unsupported("plot file")),
        Option("q", "-S", Types.Enumerate, "TOS class 1-6 (low delay, throughput, AF11, AF13, AF41, AF43)",
               allowed=sorted(_TOS), coerce=as_text, mode="client"),
        Option("r", "", Types.Integer, "Repetitions of the test (the client runs this many times)",
               mode="client"),
        Option("t", "-t", Types.Integer, "Seconds to transmit", aliases=("duration",), mode="client"),
        Option("T", "-b", Types.Integer, "Throughput limit in Mbit/s (iperf3 -b <T>M)", mode="client",
               coerce=_positive_megabits),
        Option("bandwidth", "-b", Types.String, "Target bandwidth as iperf3 writes it, e.g. 10M", mode="client"),
        Option("json", "-J", Types.Bool, "JSON output"),
    ]

    def _mode(self) -> str:
        return "server" if self.get("s") else "client"

    def _flag_value(self, opt: Option, value: Any) -> str:
        if opt.name == "T":
            return f"-b {int(value)}M"
        if opt.name == "q":
            return f"-S {_TOS[str(value)]}"
        return super()._flag_value(opt, value)

    def tool_command(self) -> str:
        command = super().tool_command()
        repeat = self.get("r")
        if repeat and self._mode() == "client":
            command = f"for _ in $(seq {int(repeat)}); do {command} || exit $?; done"
        return command

    def _starts_at_deploy(self) -> bool:
        return bool(self.get("s"))

    def _await_launched(self, pid: int) -> None:
        """A server is READY once it listens on its port: a client its READY lets start must find it
        (iperf3 binds a moment after its launch, longer on a loaded host).  Waited on the host, in one
        command, up to :data:`LISTEN_WAIT` s; a server that ended, or a host without ``ss``, waits no more."""
        port = int(self.get("p") or IPERF3_PORT)
        self.node.execute(
            "command -v ss >/dev/null || exit 0; "
            f"for _ in $(seq {int(LISTEN_WAIT * 10)}); do "
            f"ss -Hltn 'sport = :{port}' | grep -q . && exit 0; "
            f"kill -0 {int(pid)} 2>/dev/null || exit 0; sleep 0.1; done"
        )
