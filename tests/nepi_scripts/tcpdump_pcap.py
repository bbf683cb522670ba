"""A NEPI-style experiment: tcpdump captures a ping on the loopback into a pcap file.

NEPI's one-letter tcpdump attributes: ``i`` the interface, ``w`` the file,
``s`` the snap length, ``n`` no name lookups, ``c`` how many packets,
``expression`` the filter.  The ping starts 1 s after tcpdump STARTED.  Prints
OK when the capture file is a pcap holding packets.
"""

import getpass
import struct
import sys

from nepi.execution.ec import ExperimentController
from nepi.execution.resource import ResourceAction, ResourceState

ec = ExperimentController("nepi-script-tcpdump")

node = ec.register_resource("LinuxNode")
ec.set(node, "hostname", "localhost")
ec.set(node, "username", getpass.getuser())

dump = ec.register_resource("LinuxTcpdump")
ec.set(dump, "i", "lo")
ec.set(dump, "w", "capture.pcap")
ec.set(dump, "s", "128")
ec.set(dump, "n", True)
ec.set(dump, "c", "4")
ec.set(dump, "expression", "icmp")
ec.set(dump, "sudo", True)
ec.register_connection(dump, node)

ping = ec.register_resource("LinuxPing")
ec.set(ping, "target", "127.0.0.1")
ec.set(ping, "count", "4")
ec.set(ping, "interval", "0.2")
ec.register_connection(ping, node)

ec.register_condition(ping, ResourceAction.START, dump, ResourceState.STARTED, "1s")

ec.deploy()
ec.wait_finished([dump, ping])

pcap = ec.trace(dump, "capture.pcap")
states = [ec.state(g, hr=True) for g in (dump, ping)]
ec.shutdown()

ok = False
if isinstance(pcap, bytes) and len(pcap) > 24:
    magic, _major, _minor, _zone, _sigfigs, snaplen, _link = struct.unpack("<IHHiIII", pcap[:24])
    ok = magic == 0xA1B2C3D4 and snaplen == 128 and states == ["FINISHED", "FINISHED"]
    print(f"{len(pcap)} bytes of pcap, snaplen {snaplen}, states {states}")
else:
    print(f"no capture: {pcap!r}, states {states}")
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
