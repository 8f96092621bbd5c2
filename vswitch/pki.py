"""Credentials for the control channels: a small certificate authority, a certificate per component,
and the TLS contexts that check them.

    vpc pki init [--dir DIR]                              ca.crt, ca.key (EC P-256, self-signed, 10 years)
    vpc pki issue ROLE NAME [--ip IP]… [--dns NAME]…      NAME.crt, NAME.key next to ca.crt (1 year)

A certificate names its component (CN) and its role (OU, one of ``ROLES``), so a server knows who calls
and what it may do; its subject alternative names are the addresses (and DNS names) it serves on, and
it may serve and call (extended key usage serverAuth and clientAuth). Keys are written 0600; nothing
already there is ever overwritten.

A daemon's config names its credential with ``tls = {ca = …, cert = …, key = …}`` (``config.TlsConfig``).
``server_context`` requires a client certificate that chains to the CA (mutual TLS); ``client_context``
presents the daemon's own and verifies the server against the CA, hostname checked against the
server certificate's IP (or DNS) SANs. TLS 1.2 at least.

Who may do what is checked by the servers: the mapping daemon (``agents/mapping_daemon.py``: every role
but ``mapping`` reads, only ``admin`` and ``control-plane`` write) and the control plane (any certificate
of the CA on its TCP listener; the bearer token then names the account).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import socket
import ssl
from pathlib import Path
from typing import Iterable

# ``cryptography`` is imported where certificates are made: a daemon only builds TLS contexts (``ssl``).

DEFAULT_DIR = "/etc/userspace-vpc/pki"
ROLES = ("control-plane", "mapping", "edge", "hyperplane", "host", "admin")
ORGANIZATION = "userspace-vpc"
CA_DAYS, CERT_DAYS = 3650, 365
CA_CERT, CA_KEY = "ca.crt", "ca.key"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS = re.compile(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")


class PkiError(ValueError):
    """A refused PKI operation, or a credential that cannot be used; the message says which file and why."""


# --- certificates, in memory ---------------------------------------------------------------------------
def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.timezone.utc)


def create_ca(common_name: str = "userspace-vpc CA", days: int = CA_DAYS, now: datetime.datetime | None = None):
    """A new CA: (private key, self-signed certificate). EC P-256, basicConstraints CA (no sub-CAs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now(now) - datetime.timedelta(minutes=5)  # tolerate clocks a little behind
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_certificate(ca_key, ca_cert, role: str, name: str, ips: Iterable[str] = (), dns: Iterable[str] = (),
                      days: int = CERT_DAYS, now: datetime.datetime | None = None):
    """(private key, certificate) for component ``name`` with ``role``, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _check_role(role)
    _check_name(name)
    sans = [x509.IPAddress(_ip(a)) for a in ips] + [x509.DNSName(_dns(d)) for d in dns]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = _now(now) - datetime.timedelta(minutes=5)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def role_of(cert) -> str | None:
    """The role (OU) a ``cryptography`` certificate names, or None."""
    from cryptography.x509.oid import NameOID
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if ous else None


def peer_role(peercert: dict | None) -> str | None:
    """The role (OU) of a verified peer, from ``SSLObject.getpeercert()`` (``get_extra_info("peercert")``)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "organizationalUnitName":
                return value
    return None


def peer_name(peercert: dict | None) -> str | None:
    """The component name (CN) of a verified peer."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


# --- on disk: what `vpc pki` does ------------------------------------------------------------------------
def init(directory: str | os.PathLike = DEFAULT_DIR) -> Path:
    """Create a CA in ``directory`` (made if missing): ca.crt and ca.key (0600). Refuses if either exists."""
    d = Path(directory)
    for f in (CA_CERT, CA_KEY):
        if (d / f).exists():
            raise PkiError(f"{d / f} exists: {d} has a CA already (remove it yourself to start over)")
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as e:
        raise PkiError(f"{d}: {e.strerror}") from None
    key, cert = create_ca()
    _write_new(d / CA_KEY, key_pem(key), 0o600)
    _write_new(d / CA_CERT, cert_pem(cert), 0o644)
    return d / CA_CERT


def issue(directory: str | os.PathLike, role: str, name: str, ips: Iterable[str] = (),
          dns: Iterable[str] = (), days: int = CERT_DAYS) -> tuple[Path, Path]:
    """Issue NAME.crt and NAME.key (0600) in ``directory``, signed by its CA. Refuses to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _check_role(role)
    _check_name(name)
    if name.lower() in ("ca",):
        raise PkiError(f"{name!r} is the CA's own name: choose another")
    ips, dns = [_ip(a) for a in ips], [_dns(n) for n in dns]
    d = Path(directory)
    crt, key_file = d / f"{name}.crt", d / f"{name}.key"
    for f in (crt, key_file):
        if f.exists():
            raise PkiError(f"{f} exists: {name!r} has a certificate already (remove it to issue a new one)")
    try:
        ca_cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
    except FileNotFoundError as e:
        raise PkiError(f"{e.filename}: missing; create the CA first with `vpc pki init --dir {d}`") from None
    except OSError as e:
        raise PkiError(f"{e.filename}: {e.strerror}") from None
    except ValueError as e:
        raise PkiError(f"{d}: the CA's files are not a PEM certificate and key: {e}") from None
    key, cert = issue_certificate(ca_key, ca_cert, role, name, ips, dns, days)
    _write_new(key_file, key_pem(key), 0o600)
    _write_new(crt, cert_pem(cert), 0o644)
    return crt, key_file


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path} exists: not overwritten") from None
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # whatever the umask


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PkiError(f"{name!r} is not a valid name: 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', "
                       "starting with a letter or digit")


def _ip(value) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"{value!r} is not an IP address") from None


def _dns(value: str) -> str:
    if not isinstance(value, str) or not _DNS.fullmatch(value):
        raise PkiError(f"{value!r} is not a DNS name")
    return value


# --- TLS contexts ----------------------------------------------------------------------------------------
def _context(purpose: int, tls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for what, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if not os.path.exists(path):
            raise PkiError(f"tls.{what}: {path}: no such file")
    try:
        ctx.load_verify_locations(cafile=tls.ca)
    except (OSError, ssl.SSLError) as e:
        raise PkiError(f"tls.ca: {tls.ca}: not a usable CA certificate ({e})") from None
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise PkiError(f"tls.cert/tls.key: {tls.cert}, {tls.key}: not a usable certificate and key ({e})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(tls) -> ssl.SSLContext:
    """Serve with ``tls.cert``; every client must present a certificate signed by ``tls.ca``."""
    return _context(ssl.PROTOCOL_TLS_SERVER, tls)


def client_context(tls) -> ssl.SSLContext:
    """Call with ``tls.cert``; the server must present a certificate of ``tls.ca`` naming the address
    (IP SAN) or name (DNS SAN) it was reached at."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, tls)  # PROTOCOL_TLS_CLIENT: check_hostname on
    ctx.check_hostname = True
    return ctx


class TlsServer:
    """A TCP listener that hands its handler only connections that passed the TLS handshake (with
    ``server_context``: a client certificate of the CA), and reports every refused one.

    ``asyncio.start_server(ssl=…)`` drops a failed handshake silently (and upgrading a plain stream with
    ``start_tls`` races with the client's first flight), so this accepts the socket itself and runs the
    handshake with ``loop.connect_accepted_socket``: a handshake that fails, or takes longer than
    ``handshake_timeout``, calls ``on_refused(peer, reason)`` and closes the socket.
    """

    def __init__(self, sock, handler, context: ssl.SSLContext, on_refused, limit: int, handshake_timeout: float):
        self.sockets = [sock]
        self._sock, self._handler, self._context = sock, handler, context
        self._on_refused, self._limit, self._timeout = on_refused, limit, handshake_timeout
        self._pending: set = set()  # handshakes in progress (their tasks, kept referenced)
        self._task = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError:  # out of descriptors, a reset before accept: try again a little later
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn, peer) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._limit)
        try:
            await loop.connect_accepted_socket(lambda: asyncio.StreamReaderProtocol(reader, self._handler), conn,
                                               ssl=self._context, ssl_handshake_timeout=self._timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:  # ssl.SSLError is an OSError
            conn.close()
            self._on_refused(peer, str(e) or type(e).__name__)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._pending):
            t.cancel()
        self._sock.close()


async def start_tls_server(handler, host: str, port: int, context: ssl.SSLContext, on_refused, *,
                           limit: int = 1 << 16, handshake_timeout: float = 10.0, backlog: int = 128) -> TlsServer:
    """Like ``asyncio.start_server(handler, host, port, ssl=context)``, with refusals reported."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                backlog=backlog)
    sock.setblocking(False)
    server = TlsServer(sock, handler, context, on_refused, limit, handshake_timeout)
    server._task = asyncio.get_running_loop().create_task(server._accept())
    return server
