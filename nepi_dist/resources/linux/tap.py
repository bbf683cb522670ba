"""LinuxTap and LinuxTun: a virtual network device on a LinuxNode (NEPI's ``LinuxTap``/``LinuxTun``).

Deploy creates the device (``ip tuntap add``) named ``deviceName``
(default ``tap<guid>`` / ``tun<guid>``), sets ``mac``, ``mtu``,
``txqueuelen``, adds ``ip4/prefix4`` (with ``pointopoint`` as the peer) and
brings it ``up``.  Stop brings it down, start up again; release deletes it.

A device may be one end of a tunnel (:mod:`nepi_dist.resources.linux.tunnel`).
Each end does its own half on its own host, so that a tunnel between hosts
served by different host workers needs no host to reach the other:

1. discover (on this host): create the device (not for GRE: the tunnel's
   device is made in step 3), start the tunnel's process here if it has one,
   and record this end's address (and port) in Redis;
2. wait until the tunnel is PROVISIONED, which it is once both ends are
   DISCOVERED (see :class:`LinuxTunnel`);
3. provision (on this host): connect to the other end's recorded address.

Release waits for the tunnel to be released, then stops this end's tunnel
process and deletes the device: nothing that deploy created is left.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.state import ResourceState
from nepi_dist.resources.linux import netdev
from nepi_dist.resources.linux.application import LinuxApplication
from nepi_dist.resources.linux.netdev import LiveLink

if TYPE_CHECKING:
    from nepi_dist.resources.linux.tunnel import LinuxTunnel


def create_commands(sudo: str, name: str, mode: str, pi: bool = False, mac: str | None = None,
                    mtu: int | None = None, txqueuelen: int | None = None, ip4: str | None = None,
                    prefix4: int | None = None, pointopoint: str | None = None, up: bool = True) -> list[str]:
    """The commands creating a ``mode`` (tap or tun) device ``name`` configured as given."""
    words = ["tuntap", "add", "dev", name, "mode", mode] + (["pi"] if pi else [])
    commands = [sudo + netdev.ip(*words)]
    if mac or mtu or txqueuelen:
        commands.append(netdev.set_link(sudo, name, address=mac, mtu=mtu, txqueuelen=txqueuelen))
    if ip4:
        commands.append(netdev.add_address(sudo, name, ip4, 32 if prefix4 is None else prefix4, pointopoint))
    if up:
        commands.append(netdev.set_link(sudo, name, up=True))
    return commands


class LinuxTap(LiveLink, LinuxApplication):
    """A TAP device (Ethernet frames) on the LinuxNode it is connected to."""

    _rtype = "linux::Tap"
    _aliases = ("LinuxTap",)
    _help = "Creates a TAP device on a Linux host"
    #: ``ip tuntap`` mode, and the prefix of the default device name.
    _mode: ClassVar[str] = "tap"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        ro = Flags.ExecReadOnly
        add(Attribute("ip4", "IPv4 address", flags=ro))
        add(Attribute("mac", "MAC address", flags=ro))
        add(Attribute("prefix4", "IPv4 network prefix length", type=Types.Integer, range=(0, 32), flags=ro))
        add(Attribute("mtu", "Maximum transmission unit of the device", type=Types.Integer, range=(68, 65535)))
        add(Attribute("deviceName", "Name of the device (default: tap<guid> / tun<guid>, gre<guid> on a GRE "
                      "tunnel)", flags=ro))
        add(Attribute("up", "Link up", type=Types.Bool, default=True))
        add(Attribute("pointopoint", "Peer IP address (point-to-point)", flags=ro))
        add(Attribute("txqueuelen", "Length of the transmission queue", type=Types.Integer, range=(0, 2**31 - 1),
                      flags=ro))
        add(Attribute("greKey", "GRE key of a GRE tunnel", default="1", flags=ro))
        add(Attribute("greRemote", "Address of the other end of a GRE tunnel (found when empty)", flags=ro))
        add(Attribute("pi", "Add the PI (protocol information) header to frames", type=Types.Bool, default=False,
                      flags=ro))

    # -- the tunnel this device is an end of ------------------------------------------

    @property
    def tunnel(self) -> LinuxTunnel | None:
        from nepi_dist.resources.linux.tunnel import LinuxTunnel

        tunnels = [rm for rm in self.get_connected() if isinstance(rm, LinuxTunnel)]
        if len(tunnels) > 1:
            raise RuntimeError(f"device {self.guid} is an end of {len(tunnels)} tunnels: one at most")
        return tunnels[0] if tunnels else None

    @property
    def device(self) -> str:
        name = self.get("deviceName")
        if not name:
            tunnel = self.tunnel
            prefix = tunnel.device_prefix if tunnel is not None and tunnel.device_prefix else self._mode
            name = self.set("deviceName", f"{prefix}{self.guid}")
        return str(name)

    # -- deploy ----------------------------------------------------------------------

    def do_deploy(self) -> None:
        node = self.node
        if self.ec._park_or_delay({"g": self.guid, "m": "deploy"}, [node.guid], ResourceState.READY, 0.0):
            return
        if self.state < ResourceState.DISCOVERED:
            self.discover()
        tunnel = self.tunnel
        if tunnel is not None and self.ec._park_or_delay(
            {"g": self.guid, "m": "deploy"}, [tunnel.guid], ResourceState.PROVISIONED, 0.0
        ):
            return
        if tunnel is not None and tunnel.state == ResourceState.FAILED:
            raise RuntimeError(f"device {self.guid}: its tunnel {tunnel.guid} failed")
        if self.state < ResourceState.PROVISIONED:
            self.provision()
        self.set_ready()

    def do_discover(self) -> None:
        node = self.node
        node.execute(f"mkdir -p {shlex.quote(self.run_home)}", check=True)
        tunnel = self.tunnel
        if tunnel is None or tunnel.device_prefix is None:
            self.create_device()
        if tunnel is not None:
            self._put(tunnel_end=tunnel.open_end(self))
        super().do_discover()

    def create_device(self) -> None:
        """Create and configure the TAP/TUN device (once: a second call finds it made)."""
        self.make_device(lambda sudo, name: create_commands(
            sudo, name, self._mode, pi=bool(self.get("pi")), mac=self.get("mac"),
            mtu=self.get("mtu"), txqueuelen=self.get("txqueuelen"), ip4=self.get("ip4"),
            prefix4=self.get("prefix4"), pointopoint=self.get("pointopoint"), up=bool(self.get("up")),
        ))

    def make_device(self, commands: Callable[[str, str], list[str]]) -> None:
        """Run ``commands(sudo, name)``, the commands making this end's device ``name``, once.

        The device is recorded as created before they run, so that release
        deletes it even when a deploy is cut short after them; a second call
        (a discover or provision run again) finds it recorded and does nothing.
        Used by :meth:`create_device` and by a tunnel that makes the device
        itself (:class:`~nepi_dist.resources.linux.tunnel.LinuxGRETunnel`).
        """
        node = self.node
        name = self.device
        if self._got("created") == name:
            return
        self._put(created=name)  # before: a deploy cut short after the command still deletes it
        netdev.run_all(node, commands(netdev.root(node), name))

    def do_provision(self) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.connect_end(self)
        super().do_provision()

    # -- run -------------------------------------------------------------------------

    def do_start(self) -> None:
        if self.state == ResourceState.STOPPED and self.get("up"):
            netdev.run_all(self.node, [netdev.set_link(netdev.root(self.node), self.device, up=True)])
        self.set_started()

    def do_stop(self) -> None:
        netdev.run_all(self.node, [netdev.set_link(netdev.root(self.node), self.device, up=False)])
        self.set_stopped()

    def close_tunnel(self) -> None:
        """Stop this end's tunnel process (sent by the tunnel's stop to this host's worker)."""
        pid = self._got("tunnel_pid")
        if pid is not None:
            self._put(tunnel_pid=None)  # before the kill: the exit it causes is ours (see on_exit)
            node = self.node
            node.kill_group(int(pid), sudo=bool(netdev.root(node)))

    def on_exit(self, exitcode: int | None, pid: int | None = None) -> None:
        """The watcher saw this end's tunnel process end: unless we stopped it, the tunnel failed.

        (NEPI polled its tunnel processes; here the host's watcher reports the exit.)
        """
        current = self._got("tunnel_pid")
        if current is None or pid != current:
            return  # stopped by close_tunnel, or an earlier process
        self._put(tunnel_pid=None)
        tunnel = self.tunnel
        if tunnel is not None and tunnel.state < ResourceState.STOPPED:
            path = shlex.quote(f"{self.tunnel_home}/stderr")
            tail = self.node.execute(f"tail -c 500 {path} 2>/dev/null").stdout.strip()
            how = "was killed" if exitcode is None else f"exited {exitcode}"
            tunnel.fail(f"the tunnel process of end {self.guid} {how}: {tail or '(no error output)'}")

    # -- release ---------------------------------------------------------------------

    def do_release(self) -> None:
        tunnel = self.tunnel
        if tunnel is not None and self.ec._park_or_delay(
            {"g": self.guid, "m": "release"}, [tunnel.guid], ResourceState.RELEASED, 0.0
        ):
            return
        try:
            self.close_tunnel()
            created = self._got("created")
            if created:
                node = self.node
                netdev.run_all(node, [netdev.delete_link(netdev.root(node), str(created))])
                self._put(created=None)
        finally:
            super().do_release()

    # -- traces ----------------------------------------------------------------------

    @property
    def tunnel_home(self) -> str:
        """Where this end's tunnel process keeps its files on the host (its stdout, stderr, ports)."""
        tunnel = self.tunnel
        which = f"tunnel-{tunnel.guid}" if tunnel is not None else "tunnel"
        return f"{self.run_home}/{which}"


class LinuxTun(LinuxTap):
    """A TUN device (IP packets, no Ethernet header) on the LinuxNode it is connected to."""

    _rtype = "linux::Tun"
    _aliases = ("LinuxTun",)
    _help = "Creates a TUN device on a Linux host"
    _mode = "tun"
