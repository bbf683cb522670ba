"""One end of a UDP tunnel: frames of a TAP/TUN device to and from a UDP socket.

A standalone script (standard library only): LinuxUdpTunnel uploads it to
each endpoint's host and runs it there, one per endpoint, as NEPI ran its
``linux-udp-connect.py``.  The handshake is NEPI's, through files in the
tunnel's run home on the host:

1. attach to the existing device ``--device`` (created by the LinuxTap/Tun);
2. bind a UDP socket to a free port and write it to ``--local-port-file``;
3. wait for ``--peer-file`` (``ADDRESS PORT`` of the other end, written by
   this endpoint's RM once both ends are bound), connect to it, write ``0``
   to ``--ret-file``;
4. forward until SIGTERM, then print what it forwarded.

``--bwlimit`` (bytes per second) paces what the device sends into the tunnel.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_device(name: str, mode: str, pi: bool) -> int:
    """Attach to the TAP/TUN device ``name``; return its file descriptor."""
    flags = (IFF_TAP if mode == "tap" else IFF_TUN) | (0 if pi else IFF_NO_PI)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    return fd


def write_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole (a reader never sees half of it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def wait_peer(path: str, timeout: float) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                words = f.read().split()
        except FileNotFoundError:
            words = []
        if len(words) == 2:
            return words[0], int(words[1])
        time.sleep(0.05)
    raise SystemExit(f"no peer in {path} after {timeout}s")


class Pacer:
    """A token bucket: ``wait(n)`` returns once ``n`` more bytes fit in ``rate`` bytes per second."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.tokens = float(rate or 0)
        self.last = time.monotonic()

    def wait(self, size: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < size:
            time.sleep((size - self.tokens) / self.rate)
            self.last = time.monotonic()
            self.tokens = 0.0
        else:
            self.tokens -= size


class Stopped(Exception):
    """Raised by the SIGTERM/SIGINT handler: the forwarding loop ends at once."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def forward(fd: int, sock: socket.socket, pacer: Pacer, counts: dict[str, int]) -> None:
    """Forward frames both ways, counting them in ``counts``, until a signal stops it."""
    while True:
        readable, _, _ = select.select([fd, sock.fileno()], [], [])
        for source in readable:
            try:
                if source != fd:
                    os.write(fd, sock.recv(65535))
                    counts["from_peer"] += 1
                else:
                    frame = os.read(fd, 65535)
                    pacer.wait(len(frame))
                    sock.send(frame)
                    counts["to_peer"] += 1
            except OSError as exc:
                # The other end not listening yet (an ICMP refusal), or a frame the device refused.
                if exc.errno not in (errno.ECONNREFUSED, errno.EINVAL, errno.EMSGSIZE, errno.ENOBUFS):
                    raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--mode", choices=("tap", "tun"), required=True)
    parser.add_argument("--pi", action="store_true", help="frames carry the 4-byte packet information header")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--local-port-file", required=True)
    parser.add_argument("--peer-file", required=True)
    parser.add_argument("--ret-file", required=True)
    parser.add_argument("--bwlimit", type=int, default=None)
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the peer")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fd = open_device(args.device, args.mode, args.pi)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, 0))
    write_file(args.local_port_file, f"{sock.getsockname()[1]}\n")
    address, port = wait_peer(args.peer_file, args.wait)
    sock.connect((address, port))
    write_file(args.ret_file, "0\n")
    print(f"tunnel {args.device} <-> {address}:{port}", flush=True)
    counts = {"to_peer": 0, "from_peer": 0}
    with contextlib.suppress(Stopped):
        forward(fd, sock, Pacer(args.bwlimit), counts)
    print(f"forwarded {counts['to_peer']} frames to the peer, {counts['from_peer']} from it", flush=True)
    os.close(fd)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Stopped:  # stopped before the tunnel was up (a release during deploy)
        sys.exit(0)
