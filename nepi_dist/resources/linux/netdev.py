"""Network devices of a Linux host, as the interface, TAP/TUN and tunnel RMs see them.

Reading is ``ip -j addr show`` (iproute2's JSON), parsed here into
:class:`Device`; changing is one ``ip`` command per step, every value
quoted.  Commands run as root: prefixed with ``sudo -n`` when the host's user
is not root (NEPI ran them all under ``sudo -S``).  The functions that build
commands are pure, so the exact commands are testable anywhere.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import shlex
from typing import TYPE_CHECKING, Any

from nepi_dist.engine.routing import this_worker_host
from nepi_dist.errors import ArgumentValueError, AttributeValueError
from nepi_dist.model.state import ResourceState

if TYPE_CHECKING:
    from nepi_dist.resources.linux.node import LinuxNode


@dataclasses.dataclass(frozen=True)
class Device:
    """One network device of a host and its addresses."""

    name: str
    mac: str
    mtu: int
    up: bool
    ip4: list[tuple[str, int]]
    ip6: list[tuple[str, int]]
    kind: str

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Device:
        addrs = entry.get("addr_info") or []
        return cls(
            name=str(entry["ifname"]),
            mac=str(entry.get("address") or ""),
            mtu=int(entry.get("mtu") or 0),
            up="UP" in (entry.get("flags") or []),
            ip4=[(a["local"], int(a["prefixlen"])) for a in addrs if a.get("family") == "inet"],
            ip6=[(a["local"], int(a["prefixlen"])) for a in addrs
                 if a.get("family") == "inet6" and a.get("scope") != "link"],
            kind=str(entry.get("link_type") or ""),
        )


def root(node: LinuxNode) -> str:
    """``""`` when the host's user is root, else ``"sudo -n "`` (no password prompt: fail instead)."""
    uid = node._got("uid")
    if uid is None:
        uid = node.execute("id -u", check=True).stdout.strip()
        node._put(uid=uid)
    return "" if str(uid) == "0" else "sudo -n "


def devices(node: LinuxNode) -> dict[str, Device]:
    """Every network device of the host, by name."""
    out = node.execute("ip -j addr show", check=True).stdout
    return {d.name: d for d in (Device.from_json(e) for e in json.loads(out or "[]"))}


def run_all(node: LinuxNode, commands: list[str]) -> None:
    """Run ``commands`` on the host in order, stopping at the first that fails (and raising)."""
    if commands:
        node.execute(" && ".join(commands), check=True)


def prefix_length(value: Any, what: str) -> int:
    """An IPv4 prefix length from NEPI's ``mask4`` (``255.255.255.0``) or ``prefix4`` (``24``)."""
    text = str(value).strip()
    try:
        if "." in text:
            return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
        length = int(text)
    except ValueError:
        raise AttributeValueError(f"attribute {what!r}: {text!r} is neither a netmask nor a prefix length") from None
    if not 0 <= length <= 32:
        raise AttributeValueError(f"attribute {what!r}: prefix length {length} is not in 0..32")
    return length


def ip(*words: Any) -> str:
    """``ip`` with ``words``, each quoted."""
    return "ip " + " ".join(shlex.quote(str(w)) for w in words)


def add_address(sudo: str, device: str, address: str, prefix: int, peer: str | None = None) -> str:
    """The command adding ``address/prefix`` (with a point-to-point ``peer``) to ``device``."""
    words: list[Any] = ["addr", "add", f"{address}/{prefix}"]
    if peer:
        words += ["peer", f"{peer}/{prefix}"]
    return sudo + ip(*words, "dev", device)


def del_address(sudo: str, device: str, address: str, prefix: int) -> str:
    return sudo + ip("addr", "del", f"{address}/{prefix}", "dev", device)


def set_link(sudo: str, device: str, **settings: Any) -> str:
    """``ip link set dev DEVICE`` with ``address``/``mtu``/``txqueuelen``/``up`` (True/False)."""
    words: list[Any] = ["link", "set", "dev", device]
    for name in ("address", "mtu", "txqueuelen"):
        value = settings.get(name)
        if value not in (None, ""):
            words += [name, value]
    up = settings.get("up")
    if up is not None:
        words.append("up" if up else "down")
    return sudo + ip(*words)


def delete_link(sudo: str, device: str) -> str:
    """Delete ``device`` when it exists (so a second release is harmless)."""
    delete = sudo + ip("link", "del", "dev", device)
    return f"if ip link show dev {shlex.quote(device)} >/dev/null 2>&1; then {delete}; fi"


class LiveLink:
    """Applies a run-time ``set`` of ``mtu`` or ``up`` to the device, as NEPI's set hooks did.

    Mixed into RMs that have a ``node`` and a ``deviceName``.  Before deploy a
    set only records the value (deploy applies it).  Once READY the device
    changes at once, on the host: from the host's own worker (where
    ``set_with_conditions`` runs) or from any process when the host is reached
    over SSH.  A host served by a host worker is reachable only from that
    worker: ``ec.set`` from elsewhere is refused with the way to do it.
    """

    _live = ("mtu", "up")

    def set(self, name: str, value: Any) -> Any:
        rm: Any = self
        if name in self._live and rm.state in (ResourceState.READY, ResourceState.STARTED):
            node = rm.node
            worker = node.get("worker")
            if worker and worker != this_worker_host():
                raise ArgumentValueError(
                    f"attribute {name!r} of guid {rm.guid}: the host is served by worker {worker!r}; "
                    "change it at run time with ec.set_with_conditions, which runs there"
                )
            value = rm.get_attribute(name).validate(value)
            device = rm.get("deviceName")
            if value is not None and device:
                run_all(node, [set_link(root(node), device, **{name: value})])
        return super().set(name, value)  # type: ignore[misc]


def host_address(node: LinuxNode) -> str:
    """The IPv4 address by which the other hosts reach ``node``'s host.

    A node named by a host name or address: that name resolved on the host.
    A node on ``localhost`` (or served by a host worker): the address of the
    device that carries the host's default route, else its first global one.
    """
    hostname = node.get("hostname") or "localhost"
    if hostname not in ("localhost", "127.0.0.1", "::1") and not node.get("worker"):
        command = f"getent ahostsv4 {shlex.quote(hostname)} | awk 'NR==1{{print $1}}'"
    else:
        command = (
            "dev=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == \"dev\") "
            "{print $(i + 1); exit}}'); "
            "{ [ -n \"$dev\" ] && ip -4 -o addr show dev \"$dev\" scope global; ip -4 -o addr show scope global; } "
            "| awk '{print $4}' | cut -d/ -f1 | head -1"
        )
    address = node.execute(command, check=True).stdout.strip()
    if not address:
        raise RuntimeError(f"no IPv4 address found for the host of node {node.guid} ({hostname})")
    return address


def wait_file(node: LinuxNode, path: str, timeout: float) -> str | None:
    """Wait on the host (one command, no round trip per try) for ``path`` to be non-empty; its text or None."""
    tries = max(1, int(timeout * 10))
    q = shlex.quote(path)
    result = node.execute(f"for i in $(seq {tries}); do [ -s {q} ] && exec cat {q}; sleep 0.1; done; exit 1",
                          timeout=timeout + 30)
    return result.stdout if result.exitcode == 0 else None
