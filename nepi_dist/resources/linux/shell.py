"""How a worker reaches a Linux host: a local shell, or SSH with reused connections.

Both kinds offer the same few operations: run a command to completion, write
and read files (by byte range), and the size of a file.  A host is named by a
:class:`HostSpec`; :func:`shell_for` returns the shell of this worker process
for it, reusing one SSH connection per host and process.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import shlex
import subprocess
import threading
from typing import TYPE_CHECKING, Protocol

from nepi_dist.errors import NepiError

#: Host names that name the worker's own machine (NEPI's ``localhost`` rule).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger("nepi_dist.resources.linux.shell")

#: Concurrent SSH channels per connection (sshd's default MaxSessions is 10).
MAX_CHANNELS = 8


class HostUnreachableError(NepiError, ConnectionError):
    """Raised when a host cannot be reached over SSH within the connect timeout."""


class HostKeyError(HostUnreachableError):
    """Raised when a host's SSH key is neither its node's ``serverKey`` nor in known_hosts, or differs
    from them (and ``hostKeyCheck`` was not turned off)."""


#: The known_hosts file read besides ``~/.ssh/known_hosts`` of the worker's user (optional).
KNOWN_HOSTS_ENV = "NEPI_DIST_KNOWN_HOSTS"


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """Where a node is and how to log in."""

    hostname: str
    username: str | None = None
    port: int = 22
    identity: str | None = None
    gateway: str | None = None
    gateway_user: str | None = None
    server_key: str | None = None
    connect_timeout: float = 10.0
    #: Verify the host's key (``serverKey``, else known_hosts); False accepts any key, and is logged.
    verify_host_key: bool = True
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def local(self) -> bool:
        """NEPI's rule: a loopback host name runs locally whatever the user name or key.

        A port other than 22 on it, or a gateway, still means SSH: an sshd of
        its own on that port, or the gateway's own loopback.
        """
        return self.hostname in LOOPBACK_NAMES and self.port == 22 and not self.gateway


@dataclasses.dataclass
class Result:
    """What a command printed and how it ended."""

    stdout: str
    stderr: str
    exitcode: int


class Shell(Protocol):
    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> Result: ...

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes: ...

    def size(self, path: str) -> int: ...

    def close(self) -> None: ...


class LocalShell:
    """Runs commands on the worker's own host."""

    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> Result:
        proc = subprocess.run(
            ["bash", "-c", command],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            check=False,
        )
        return Result(proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), proc.returncode)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def close(self) -> None:
        pass


class SSHShell:
    """Runs commands on a remote host over one reused SSH connection (paramiko)."""

    def __init__(self, spec: HostSpec) -> None:

        self.spec = spec
        # sshd allows 10 sessions per connection by default (MaxSessions): stay below it.
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS)
        self._hop: paramiko.SSHClient | None = None
        self._connect_lock = threading.Lock()
        self._client = self._connect()

    def _connect(self) -> paramiko.SSHClient:
        """Open the SSH connection (through the gateway when there is one); typed errors when it cannot."""
        import paramiko

        spec = self.spec
        try:
            sock = None
            if spec.gateway:
                hop = paramiko.SSHClient()
                self._trust(hop, spec.gateway, 22, None)
                hop.connect(
                    spec.gateway, username=spec.gateway_user or spec.username, key_filename=spec.identity,
                    timeout=spec.connect_timeout, banner_timeout=spec.connect_timeout,
                    auth_timeout=spec.connect_timeout, allow_agent=False, look_for_keys=spec.identity is None,
                )
                self._hop = hop
                transport = hop.get_transport()
                assert transport is not None
                sock = transport.open_channel("direct-tcpip", (spec.hostname, spec.port), ("127.0.0.1", 0))
            client = paramiko.SSHClient()
            self._trust(client, spec.hostname, spec.port, spec.server_key)
            client.connect(
                spec.hostname, port=spec.port, username=spec.username, key_filename=spec.identity,
                password=spec.password,
                timeout=spec.connect_timeout, banner_timeout=spec.connect_timeout,
                auth_timeout=spec.connect_timeout, allow_agent=False, look_for_keys=spec.identity is None,
                sock=sock,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"ssh {spec.hostname}:{spec.port}: the host's {exc.key.get_name()} key is not the one expected "
                "(serverKey or known_hosts): refused"
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"ssh {spec.hostname}:{spec.port}: unknown host key: give the node's serverKey, add the host "
                    f"to ~/.ssh/known_hosts (or ${KNOWN_HOSTS_ENV}), or set hostKeyCheck false"
                ) from None
            raise HostUnreachableError(
                f"ssh {spec.username or ''}@{spec.hostname}:{spec.port}: {type(exc).__name__}: {exc}"
            ) from None
        except (OSError, ValueError) as exc:
            raise HostUnreachableError(
                f"ssh {spec.username or ''}@{spec.hostname}:{spec.port}: {type(exc).__name__}: {exc}"
            ) from None
        return client

    def _trust(self, client: paramiko.SSHClient, hostname: str, port: int, server_key: str | None) -> None:
        """Make ``client`` accept only the host's known key: ``server_key``, else known_hosts.

        With ``verify_host_key`` False any key is accepted, and a warning says so.
        """
        import paramiko

        if not self.spec.verify_host_key:
            log.warning("ssh %s:%s: the host's key is NOT verified (hostKeyCheck false)", hostname, port)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            return
        name = f"[{hostname}]:{port}" if port != 22 else hostname
        if server_key:
            keytype, data = server_key.split()[:2]
            client.get_host_keys().add(name, keytype, paramiko.PKey.from_type_string(keytype, base64.b64decode(data)))
        else:
            client.load_system_host_keys()
            extra = os.environ.get(KNOWN_HOSTS_ENV)
            if extra:
                client.load_host_keys(extra)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> Result:
        out, err, code = self._raw(command, stdin, timeout)
        return Result(out.decode(errors="replace"), err.decode(errors="replace"), code)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        q = shlex.quote(path)
        result = self.run(f"mkdir -p {shlex.quote(os.path.dirname(path) or '.')} && cat > {q} && chmod {mode:o} {q}",
                          stdin=data)
        if result.exitcode != 0:
            raise OSError(f"cannot write {path} on {self.spec.hostname}: {result.stderr.strip()}")

    def _raw(self, command: str, stdin: bytes | None = None, timeout: float | None = None) -> tuple[bytes, bytes, int]:
        with self._slots:
            chan = self._open_channel()
            chan.settimeout(timeout)
            chan.exec_command(f"bash -c {shlex.quote(command)}")
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
            return out, err, chan.recv_exit_status()

    def _open_channel(self) -> paramiko.Channel:
        """A new session channel; on a connection that died (the server closed it, a link cut) once more
        on a new connection.  Safe to repeat: no command was sent on a channel that did not open."""
        import paramiko

        client = self._client
        try:
            return self._session(client)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            with self._connect_lock:
                if self._client is client:  # the first thread to see it reconnects; the others reuse that
                    log.warning("ssh %s:%s: the connection failed (%s: %s); connecting again",
                                self.spec.hostname, self.spec.port, type(exc).__name__, exc)
                    client.close()
                    if self._hop is not None:
                        self._hop.close()
                    self._client = self._connect()
            return self._session(self._client)

    @staticmethod
    def _session(client: paramiko.SSHClient) -> paramiko.Channel:
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("the SSH connection is closed")
        return transport.open_session()

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        q = shlex.quote(path)
        command = f"test -f {q} || exit 44; tail -c +{offset + 1} {q}"
        if size >= 0:
            command += f" | head -c {size}"
        out, err, code = self._raw(command)
        if code == 44:
            raise FileNotFoundError(path)
        if code != 0:
            raise OSError(f"cannot read {path} on {self.spec.hostname}: {err.decode(errors='replace').strip()}")
        return out

    def size(self, path: str) -> int:
        result = self.run(f"stat -c %s {shlex.quote(path)}")
        if result.exitcode != 0:
            raise FileNotFoundError(path)
        return int(result.stdout.strip())

    def close(self) -> None:
        self._client.close()
        if self._hop is not None:
            self._hop.close()


_SHELLS: dict[HostSpec, Shell] = {}
_SHELLS_LOCK = threading.Lock()


def shell_for(spec: HostSpec) -> Shell:
    """Return this process's shell for ``spec`` (one SSH connection per host, reused)."""
    if spec.local:
        return LocalShell()
    with _SHELLS_LOCK:
        shell = _SHELLS.get(spec)
        if shell is not None and _alive(shell):
            return shell
        shell = SSHShell(spec)
        _SHELLS[spec] = shell
        return shell


def _alive(shell: Shell) -> bool:
    if isinstance(shell, SSHShell):
        transport = shell._client.get_transport()
        return transport is not None and transport.is_active()
    return True
