"""Tunnels between two LinuxTap/LinuxTun ends (NEPI's ``LinuxUdpTunnel`` and ``LinuxGRETunnel``).

A tunnel is connected to its two ends, each a device on its own node.  It
never runs a command itself: each end does its half on its own host (see
:mod:`nepi_dist.resources.linux.tap`), and the tunnel is the meeting point:

* its deploy waits until both ends are DISCOVERED (each has recorded its
  address, and port, in Redis), then it is PROVISIONED, which lets both
  ends connect to each other; once both are READY, so is the tunnel;
* its stop tells each end's host to stop its tunnel process;
* its release lets the ends go: each stops its process and deletes its
  device once the tunnel is RELEASED.

So the tunnel may run on any worker (it routes to the pool queue), and the
two hosts never need to reach each other's worker.

* :class:`LinuxUdpTunnel` carries the frames of the ends' TAP (or TUN)
  devices in UDP datagrams, one forwarding process per end
  (:mod:`nepi_dist.resources.linux.udp_forward`), as NEPI's did.  The
  host's watcher reports a forwarder's exit to its end: one that no stop or
  release caused fails the tunnel (NEPI polled the processes instead).
* :class:`LinuxGRETunnel` makes each end's device a kernel GRE tunnel
  (``ip link add … type gre``) towards the other end's host.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, ClassVar

from nepi_dist.errors import AttributeValueError
from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.resources.linux import netdev, watcher
from nepi_dist.resources.linux.tap import LinuxTap

#: Seconds an end waits for its tunnel process to bind, or to hear of the other end.
CONNECT_TIMEOUT = 30.0
FORWARDER = Path(__file__).with_name("udp_forward.py")


class LinuxTunnel(ResourceManager):
    """What every tunnel between two LinuxTap/LinuxTun ends shares (not a type of its own)."""

    _platform = "linux"
    #: Set when the tunnel makes the ends' devices itself (GRE): the prefix of their default name.
    device_prefix: ClassVar[str | None] = None

    @property
    def endpoints(self) -> list[LinuxTap]:
        """The two ends, by guid."""
        ends = [rm for rm in self.get_connected() if isinstance(rm, LinuxTap)]
        if len(ends) != 2:
            raise RuntimeError(f"tunnel {self.guid} joins two LinuxTap/LinuxTun ends, not {len(ends)}")
        return ends

    @property
    def endpoint1(self) -> LinuxTap:
        return self.endpoints[0]

    @property
    def endpoint2(self) -> LinuxTap:
        return self.endpoints[1]

    def other(self, end: LinuxTap) -> LinuxTap:
        return next(e for e in self.endpoints if e.guid != end.guid)

    # -- the meeting point -------------------------------------------------------------

    def do_deploy(self) -> None:
        ends = self.endpoints
        guids = [e.guid for e in ends]
        if self.ec._park_or_delay({"g": self.guid, "m": "deploy"}, guids, ResourceState.DISCOVERED, 0.0):
            return
        self._check_ends(ends)
        state = self.state
        if state < ResourceState.PROVISIONED:
            through = [ResourceState.DISCOVERED] if state < ResourceState.DISCOVERED else []
            self._set_state(ResourceState.PROVISIONED, through)
        if self.ec._park_or_delay({"g": self.guid, "m": "deploy"}, guids, ResourceState.READY, 0.0):
            return
        self._check_ends(ends)
        self.set_ready()

    def _check_ends(self, ends: list[LinuxTap]) -> None:
        """Raise when an end failed (a non-critical one: a critical one aborts the run anyway)."""
        failed = [e.guid for e in ends if e.state == ResourceState.FAILED]
        if failed:
            raise RuntimeError(f"tunnel {self.guid}: its end {failed[0]} failed")

    def do_stop(self) -> None:
        self.ec._send([(e.guid, "close_tunnel", [], {}) for e in self.endpoints])
        self.set_stopped()

    # -- each end's half, run by the end on its own host ----------------------------------

    def open_end(self, end: LinuxTap) -> dict[str, Any]:
        """Prepare ``end`` (discover); return what the other end needs to reach it."""
        raise NotImplementedError

    def connect_end(self, end: LinuxTap) -> None:
        """Connect ``end`` to the other end (provision), from what the other end recorded."""
        raise NotImplementedError

    def _theirs(self, end: LinuxTap) -> dict[str, Any]:
        found = self.other(end)._got("tunnel_end")
        if not found:
            raise RuntimeError(f"the other end of tunnel {self.guid} recorded no address")
        return dict(found)


def _no_cipher(old: Any, new: Any) -> Any:
    if new not in (None, "PLAIN"):
        raise AttributeValueError(
            f"attribute 'cipher': {new} is not available: nepi_dist's UDP tunnel carries frames "
            "in the clear (PLAIN); NEPI's ciphers came from python-crypto, which no longer exists"
        )
    return new


def _no_cipher_key(old: Any, new: Any) -> Any:
    if new is not None:
        raise AttributeValueError(
            "attribute 'cipherKey': not available: nepi_dist's UDP tunnel does not encrypt (cipher PLAIN only)"
        )
    return new


def forwarder_command(sudo: str, script: str, home: str, device: str, mode: str, pi: bool,
                      bwlimit: int | None) -> str:
    """The command running one end's UDP forwarder in ``home`` (every value quoted)."""
    words = ["python3", script, "--device", device, "--mode", mode,
             "--local-port-file", f"{home}/local_port", "--peer-file", f"{home}/peer",
             "--ret-file", f"{home}/ret_file"]
    if pi:
        words.append("--pi")
    if bwlimit:
        words += ["--bwlimit", str(bwlimit)]
    return f"exec {sudo}{shlex.join(words)}"


class LinuxUdpTunnel(LinuxTunnel):
    """Frames of two TAP (or two TUN) devices carried over UDP between their hosts."""

    _rtype = "linux::UdpTunnel"
    _aliases = ("LinuxUdpTunnel",)
    _help = "Constructs a tunnel between two Linux endpoints using a UDP connection"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        ro = Flags.ExecReadOnly
        add(Attribute("cipher", "Cipher of the tunnel's traffic: PLAIN only here (NEPI: PLAIN, AES, Blowfish, "
                      "DES, DES3)", type=Types.Enumerate, allowed=["PLAIN", "AES", "Blowfish", "DES", "DES3"],
                      flags=ro, set_hook=_no_cipher))
        add(Attribute("cipherKey", "Symmetric key of the cipher (not available: PLAIN only)",
                      flags=ro | Flags.Credential, set_hook=_no_cipher_key))
        add(Attribute("txQueueLen", "Transmission queue length of the ends' devices (kernel default 1000)",
                      type=Types.Integer, range=(0, 2**31 - 1), flags=ro))
        add(Attribute("bwLimit", "Bandwidth of the tunnel in bytes per second (each direction)",
                      type=Types.Integer, range=(1, None), flags=ro))

    def open_end(self, end: LinuxTap) -> dict[str, Any]:
        node = end.node
        sudo = netdev.root(node)
        home = end.tunnel_home
        if node.missing_commands(["python3"]):
            raise RuntimeError("the UDP tunnel's forwarder needs python3 on the host")
        script = f"{node.src_dir}/nepi-udp-forward.py"
        node.upload(FORWARDER.read_bytes(), script, 0o755)
        queue = self.get("txQueueLen")
        if queue is not None:
            netdev.run_all(node, [netdev.set_link(sudo, end.device, txqueuelen=queue)])
        pid = end._got("tunnel_pid")
        if pid is None:  # (a discover run again after it started the forwarder waits for that one)
            q = shlex.quote(home)
            node.execute(f"mkdir -p {q} && rm -f {q}/local_port {q}/peer {q}/ret_file", check=True)
            command = forwarder_command(sudo, script, home, end.device, end._mode, bool(end.get("pi")),
                                        self.get("bwLimit"))
            pid = node.run_detached(command, home)
            end._put(tunnel_pid=pid)
            # Its end hears of its exit (LinuxTap.on_exit): one not caused by a stop fails the tunnel.
            watcher.watch(self.ec, end.guid, node.host_spec(), home, pid, lambda: None)
        port = netdev.wait_file(node, f"{home}/local_port", CONNECT_TIMEOUT)
        if port is None:
            raise RuntimeError(f"the UDP tunnel's forwarder did not bind: {self._stderr(end)}")
        return {"addr": netdev.host_address(node), "port": int(port)}

    def connect_end(self, end: LinuxTap) -> None:
        theirs = self._theirs(end)
        node = end.node
        home = end.tunnel_home
        node.upload(f"{theirs['addr']} {int(theirs['port'])}\n".encode(), f"{home}/peer")
        if netdev.wait_file(node, f"{home}/ret_file", CONNECT_TIMEOUT) is None:
            raise RuntimeError(f"the UDP tunnel's forwarder did not connect: {self._stderr(end)}")

    @staticmethod
    def _stderr(end: LinuxTap) -> str:
        path = shlex.quote(f"{end.tunnel_home}/stderr")
        return end.node.execute(f"tail -c 500 {path} 2>/dev/null").stdout.strip() or "(no error output)"


def gre_commands(sudo: str, name: str, local: str, remote: str, key: str | int, ip4: str | None,
                 prefix4: int | None, peer: str | None, mtu: int | None = None, up: bool = True) -> list[str]:
    """The commands making ``name`` a GRE tunnel from ``local`` to ``remote`` (every value quoted)."""
    commands = [
        f"{{ {sudo}modprobe ip_gre 2>/dev/null || true; }}",
        sudo + netdev.ip("link", "add", "dev", name, "type", "gre", "remote", remote, "local", local,
                         "ttl", 255, "key", key, "csum"),
    ]
    if ip4:
        commands.append(netdev.add_address(sudo, name, ip4, 32 if prefix4 is None else prefix4, peer))
    if mtu:
        commands.append(netdev.set_link(sudo, name, mtu=mtu))
    if up:
        commands.append(netdev.set_link(sudo, name, up=True))
    return commands


class LinuxGRETunnel(LinuxTunnel):
    """A kernel GRE tunnel between the hosts of two ends; each end's device is the tunnel's."""

    _rtype = "linux::GRETunnel"
    _aliases = ("LinuxGRETunnel",)
    _help = "Constructs a GRE tunnel between two Linux endpoints"
    device_prefix = "gre"

    def open_end(self, end: LinuxTap) -> dict[str, Any]:
        return {"addr": netdev.host_address(end.node), "ip4": end.get("ip4")}

    def connect_end(self, end: LinuxTap) -> None:
        mine, theirs = dict(end._got("tunnel_end") or {}), self._theirs(end)
        end.make_device(lambda sudo, name: gre_commands(
            sudo, name, local=mine["addr"], remote=end.get("greRemote") or theirs["addr"],
            key=end.get("greKey"), ip4=end.get("ip4"), prefix4=end.get("prefix4"),
            peer=end.get("pointopoint") or theirs.get("ip4"), mtu=end.get("mtu"), up=bool(end.get("up")),
        ))
