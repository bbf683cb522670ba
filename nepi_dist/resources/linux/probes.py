"""LinuxMtr and LinuxNPing: path and packet probes (NEPI's ``LinuxMtr``, ``LinuxNPing``).

Each is a LinuxApplication whose command is built, at deploy, from NEPI's
attributes (same names, defaults and meaning), unless ``command`` is set.  As
in NEPI: ``continuous`` runs the probe again and again until stopped,
``printTimestamp`` prints ``YYYYmmddHHMMSS`` before each run, ``/usr/sbin``
is added to the PATH, and the probe runs as root (NEPI's ``sudo -S``; here
``sudo -n`` when the host's user is not root, nothing when it is).  The
package providing the binary is installed only when the binary is missing.
Their output is the ``stdout`` trace.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.resources.linux import netdev
from nepi_dist.resources.linux.application import LinuxApplication

#: A flag of the command line: (attribute, option, type, help).  A Bool is a bare option.
Option = tuple[str, str, Types, str]


def probe_command(binary: str, fixed: list[str], options: list[Option], values: dict[str, Any], target: str,
                  sudo: str = "", continuous: bool = False, timestamp: bool = False) -> str:
    """The shell command of one probe, every value quoted."""
    words = [binary, *fixed]
    for name, option, type_, _ in options:
        value = values.get(name)
        if value is None or value is False:
            continue
        words += [option] if type_ is Types.Bool else [option, str(value)]
    words.append(target)
    run = sudo + shlex.join(words)
    if timestamp:
        run = f'echo "$(date +%Y%m%d%H%M%S)"; {run}'
    if continuous:
        run = f"while true; do {run}; done"
    return f'export PATH="$PATH:/usr/sbin:/sbin"; {run}'


class LinuxProbe(LinuxApplication):
    """A LinuxApplication running one probe towards ``target`` (not a type of its own)."""

    _binary: ClassVar[str] = ""
    _fixed: ClassVar[list[str]] = []
    #: Package providing the binary: on Debian-like hosts, and on the others (dnf).
    _deb_package: ClassVar[str] = ""
    _rpm_package: ClassVar[str] = ""
    _options: ClassVar[list[Option]] = []
    _option_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def _register_attributes(cls) -> None:
        ro = Flags.ExecReadOnly
        for name, _option, type_, help_ in cls._options:
            cls._register_attribute(Attribute(name, help_, type=type_, default=cls._option_defaults.get(name),
                                              flags=ro))
        cls._register_attribute(Attribute("continuous", f"Run {cls._binary} in a loop until stopped",
                                          type=Types.Bool, default=False, flags=ro))
        cls._register_attribute(Attribute("printTimestamp", f"Print a timestamp before each run of {cls._binary}",
                                          type=Types.Bool, default=False, flags=ro))
        cls._register_attribute(Attribute("target", f"{cls._binary} target host", flags=ro))

    def build_command(self) -> str:
        target = self.get("target")
        if not target:
            raise RuntimeError(f"{self._rtype} {self.guid}: attribute 'target' is needed")
        values = {name: self.get(name) for name, *_ in self._options}
        return probe_command(self._binary, self._fixed, self._options, values, target, netdev.root(self.node),
                             bool(self.get("continuous")), bool(self.get("printTimestamp")))

    def do_provision(self) -> None:
        node = self.node
        if not self.get("command"):
            self.set("command", self.build_command())
        probe = f'PATH="$PATH:/usr/sbin:/sbin" command -v {shlex.quote(self._binary)} >/dev/null'
        if node.execute(probe).exitcode != 0:
            debian = node.os in ("debian", "ubuntu", "raspbian", "linuxmint")
            self._add_depends(self._deb_package if debian else self._rpm_package)
        super().do_provision()


class LinuxMtr(LinuxProbe):
    """``mtr --report`` towards ``target``: each hop's loss and round-trip times."""

    _rtype = "linux::Mtr"
    _aliases = ("LinuxMtr",)
    _help = "Runs mtr (a traceroute with ping statistics) towards a target"
    _binary = "mtr"
    _fixed = ["--report"]
    _deb_package = "mtr-tiny"
    _rpm_package = "mtr"
    _options = [
        ("reportCycles", "--report-cycles", Types.Integer,
         "mtr --report-cycles (-c): pings sent to each hop, one cycle a second"),
        ("noDns", "--no-dns", Types.Bool, "mtr --no-dns (-n): show addresses, do not resolve names"),
        ("address", "--address", Types.String,
         "mtr --address (-a): bind the outgoing socket to this source address"),
        ("interval", "--interval", Types.Double, "mtr --interval (-i): seconds between ICMP ECHO requests"),
    ]
    _option_defaults = {"noDns": True}


class LinuxNPing(LinuxProbe):
    """``nping`` (from nmap) towards ``target``: probes in TCP, UDP, ICMP, ARP or traceroute mode."""

    _rtype = "linux::NPing"
    _aliases = ("LinuxNPing",)
    _help = "Runs nping (nmap's packet generator) towards a target"
    _binary = "nping"
    _deb_package = "nmap"
    _rpm_package = "nmap"
    _options = [
        ("c", "-c", Types.Integer, "nping -c: stop after this many rounds"),
        ("e", "-e", Types.String, "nping -e: the network interface to use"),
        ("delay", "--delay", Types.String, "nping --delay: time between probes (e.g. 1s, 200ms)"),
        ("rate", "--rate", Types.Double, "nping --rate: probes per second"),
        ("ttl", "--ttl", Types.Integer, "nping --ttl: IP time to live"),
        ("p", "-p", Types.Integer, "nping -p: target port"),
        ("tcp", "--tcp", Types.Bool, "nping --tcp: TCP probe mode"),
        ("udp", "--udp", Types.Bool, "nping --udp: UDP probe mode"),
        ("icmp", "--icmp", Types.Bool, "nping --icmp: ICMP probe mode"),
        ("arp", "--arp", Types.Bool, "nping --arp: ARP/RARP probe mode"),
        ("traceroute", "--traceroute", Types.Bool, "nping --traceroute: traceroute mode"),
    ]
    _option_defaults = {"tcp": False, "udp": False, "icmp": False, "arp": False, "traceroute": False}
