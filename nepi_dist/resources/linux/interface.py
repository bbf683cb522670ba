"""LinuxInterface: a network device of a LinuxNode, found or configured (NEPI's ``LinuxInterface``).

Deploy waits for the node and, when connected to one, the
:class:`~nepi_dist.resources.linux.channel.LinuxChannel`.  Discover finds the
device as NEPI did: by ``deviceName``; else the one holding ``ip4``/``ip6``;
else, with neither given, the first device that is up (loopback excepted).
The device's values fill the attributes left unset.  Provision configures
what was asked and is not there yet: ``ip4``/``mask4`` and ``ip6``/``mask6``
added, ``mac``, ``mtu`` and ``up`` set.  Every change is recorded with its
undo, and release undoes them (newest first) before ``tearDown``: the host is
left as deploy found it.  ``mtu`` and ``up`` may change at run time
(:class:`~nepi_dist.resources.linux.netdev.LiveLink`).
"""

from __future__ import annotations

import ipaddress
import shlex

from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.resources.linux import netdev
from nepi_dist.resources.linux.channel import LinuxChannel
from nepi_dist.resources.linux.netdev import Device, LiveLink
from nepi_dist.resources.linux.node import LinuxNode


class LinuxInterface(LiveLink, ResourceManager):
    """A network device on the LinuxNode it is connected to."""

    _rtype = "linux::Interface"
    _aliases = ("LinuxInterface",)
    _help = "Finds or configures a network device of a Linux host"
    _platform = "linux"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        ro = Flags.ExecReadOnly
        add(Attribute("ip4", "IPv4 address", flags=ro))
        add(Attribute("ip6", "IPv6 address", flags=ro))
        add(Attribute("mac", "MAC address", flags=ro))
        add(Attribute("mask4", "IPv4 network mask: 255.255.255.0, or a prefix length", flags=ro))
        add(Attribute("mask6", "IPv6 prefix length", type=Types.Integer, range=(0, 128), flags=ro))
        add(Attribute("mtu", "Maximum transmission unit of the device", type=Types.Integer, range=(68, 65535)))
        add(Attribute("deviceName", "Name of the device (e.g. eth0)", flags=ro))
        add(Attribute("up", "Link up", type=Types.Bool))
        add(Attribute("tearDown", "Bash script run on the host at release", flags=ro))

    # -- where -----------------------------------------------------------------------

    @property
    def node(self) -> LinuxNode:
        nodes = [rm for rm in self.get_connected() if isinstance(rm, LinuxNode)]
        if not nodes:
            raise RuntimeError(f"interface {self.guid} is not connected to a linux::Node")
        return nodes[0]

    @property
    def channel(self) -> LinuxChannel | None:
        channels = [rm for rm in self.get_connected() if isinstance(rm, LinuxChannel)]
        return channels[0] if channels else None

    # -- deploy ----------------------------------------------------------------------

    def do_deploy(self) -> None:
        waits = [self.node.guid]
        channel = self.channel
        if channel is not None:
            waits.append(channel.guid)
        if self.ec._park_or_delay({"g": self.guid, "m": "deploy"}, waits, ResourceState.READY, 0.0):
            return
        state = self.state
        if state < ResourceState.DISCOVERED:
            self.discover()
        if state < ResourceState.PROVISIONED:
            self.provision()
        self.set_ready()

    def do_discover(self) -> None:
        device = self._find(netdev.devices(self.node))
        if device is None:
            wanted = {k: self.get(k) for k in ("deviceName", "ip4", "ip6") if self.get(k)}
            raise RuntimeError(f"no network device on the host matches {wanted or 'up'}")
        self._put(found=device.name)
        if not self.get("deviceName"):
            self.set("deviceName", device.name)
        if not self.get("mac") and device.mac:
            self.set("mac", device.mac)
        # Unset values come from the device: its first address, or the mask of the one asked for.
        ip4 = self.get("ip4")
        held4 = [(a, n) for a, n in device.ip4 if a == ip4] if ip4 else device.ip4[:1]
        if held4:
            self.set("ip4", held4[0][0])
            if self.get("mask4") is None:
                self.set("mask4", str(ipaddress.IPv4Network(f"0.0.0.0/{held4[0][1]}").netmask))
        ip6 = self.get("ip6")
        held6 = [(a, n) for a, n in device.ip6 if a == ip6] if ip6 else device.ip6[:1]
        if held6:
            self.set("ip6", held6[0][0])
            if self.get("mask6") is None:
                self.set("mask6", held6[0][1])
        super().do_discover()

    def _find(self, found: dict[str, Device]) -> Device | None:
        name, ip4, ip6 = self.get("deviceName"), self.get("ip4"), self.get("ip6")
        if name:
            return found.get(name)
        for device in found.values():
            if (ip4 and ip4 in [a for a, _ in device.ip4]) or (ip6 and ip6 in [a for a, _ in device.ip6]):
                return device
        if ip4 or ip6:
            return None
        return next((d for d in found.values() if d.up and d.kind != "loopback"), None)

    def do_provision(self) -> None:
        node = self.node
        sudo = netdev.root(node)
        name = self.get("deviceName")
        device = netdev.devices(node).get(name)
        if device is None:
            raise RuntimeError(f"device {name!r} is gone from the host")
        steps: list[tuple[str, str]] = []
        mac = self.get("mac")
        if mac and mac.lower() != device.mac.lower():
            steps.append((netdev.set_link(sudo, name, address=mac), netdev.set_link(sudo, name, address=device.mac)))
        mtu = self.get("mtu")
        if mtu is not None and mtu != device.mtu:
            steps.append((netdev.set_link(sudo, name, mtu=mtu), netdev.set_link(sudo, name, mtu=device.mtu)))
        ip4 = self.get("ip4")
        if ip4 and ip4 not in [a for a, _ in device.ip4]:
            mask = self.get("mask4")
            if mask is None:
                raise RuntimeError(f"ip4 {ip4} is to be added to {name}: mask4 is needed too")
            length = netdev.prefix_length(mask, "mask4")
            steps.append((netdev.add_address(sudo, name, ip4, length), netdev.del_address(sudo, name, ip4, length)))
        ip6 = self.get("ip6")
        if ip6 and ip6 not in [a for a, _ in device.ip6]:
            length6 = self.get("mask6")
            if length6 is None:
                raise RuntimeError(f"ip6 {ip6} is to be added to {name}: mask6 is needed too")
            steps.append((netdev.add_address(sudo, name, ip6, length6), netdev.del_address(sudo, name, ip6, length6)))
        up = self.get("up")
        if up is not None and up != device.up:
            steps.append((netdev.set_link(sudo, name, up=up), netdev.set_link(sudo, name, up=device.up)))
        undo: list[str] = list(self._got("undo") or [])
        for do, revert in steps:
            netdev.run_all(node, [do])
            undo.append(revert)
            self._put(undo=undo)
        super().do_provision()

    # -- release ---------------------------------------------------------------------

    def do_release(self) -> None:
        try:
            undo = list(self._got("undo") or [])
            if undo:
                node = self.node
                # Each undo on its own: one that fails (the device is gone) does not stop the others.
                node.execute("; ".join(f"{{ {cmd}; }}" for cmd in reversed(undo)))
                self._put(undo=[])
            tear_down = self.get("tearDown")
            if tear_down:
                self.node.execute(f"cd {shlex.quote(self.node.home_dir)} && {tear_down}", timeout=300)
        finally:
            self.set_released()
