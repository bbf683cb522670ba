"""A NEPI-style experiment: one application serves a file with netcat, another on the same
host fetches it; both declare their packages in ``depends`` (installed only when missing).

The server's file travels through ``files`` (NEPI's ${SHARE}); the client starts
one second after the server STARTED.  Prints OK when the bytes arrived intact.
"""

import getpass
import hashlib
import os
import socket
import sys

from nepi.execution.ec import ExperimentController
from nepi.execution.resource import ResourceAction, ResourceState

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

payload = os.urandom(200_000)
with open("payload.bin", "wb") as f:
    f.write(payload)

ec = ExperimentController("nepi-script-transfer")

node = ec.register_resource("LinuxNode")
ec.set(node, "hostname", "localhost")
ec.set(node, "username", getpass.getuser())

server = ec.register_resource("LinuxApplication")
ec.set(server, "depends", "netcat-openbsd")
ec.set(server, "files", os.path.abspath("payload.bin"))
ec.set(server, "command", f"nc -l -q 1 127.0.0.1 {port} < ${{SHARE}}/payload.bin")
ec.register_connection(server, node)

client = ec.register_resource("LinuxApplication")
ec.set(client, "depends", "netcat-openbsd coreutils")
ec.set(client, "command", f"nc -w 5 127.0.0.1 {port} > received.bin && sha256sum received.bin")
ec.register_connection(client, node)

ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "1s")

ec.deploy()
ec.wait_finished([server, client])

received = ec.trace(client, "received.bin")
digest = ec.trace(client, "stdout").split()[0]
states = [ec.state(g) for g in (server, client)]
ec.shutdown()

ok = (states == [ResourceState.FINISHED] * 2 and received == payload
      and digest == hashlib.sha256(payload).hexdigest())
print(f"states {states}, {len(received or b'')} bytes received, sha256 {digest}")
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
