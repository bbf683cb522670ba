"""A server and a client on a host: the client starts once the server is STARTED.

Run on localhost by default; pass ``--host HOST --user USER --key KEYFILE [--port N]``
to run both over SSH on another machine (the same code path the tests use).
"""

from __future__ import annotations

import argparse
import sys

from nepi_dist import ExperimentController, ResourceAction, ResourceState
from nepi_dist.engine.embedded import free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--user")
    parser.add_argument("--key")
    parser.add_argument("--port", type=int, default=22)
    args = parser.parse_args()

    ec = ExperimentController(exp_id="client-server")
    node = ec.register_resource("linux::Node")
    ec.set(node, "hostname", args.host)
    ec.set(node, "port", args.port)
    if args.user:
        ec.set(node, "username", args.user)
    if args.key:
        ec.set(node, "identity", args.key)
    port = free_port()
    server = ec.register_resource("linux::Application")
    ec.set(server, "command", f"echo 'greetings from the server' | nc -l -q 1 127.0.0.1 {port}")
    ec.set(server, "depends", "netcat-openbsd")
    client = ec.register_resource("linux::Application")
    ec.set(client, "command",
           f"for i in $(seq 20); do nc -w 2 127.0.0.1 {port} </dev/null && break; sleep 0.2; done")
    for app in (server, client):
        ec.register_connection(app, node)
    ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "0.5s")
    ec.deploy()
    ec.wait_finished([server, client], timeout=120)
    print("client received:", (ec.trace(client, "stdout") or "").strip())
    ec.shutdown()
    return 0 if ec.failure_level == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
