"""vswitch/pki.py and `vpc pki`: the CA, certificates per role, and the TLS contexts that check them.

Handshakes run in memory (two ``ssl.MemoryBIO`` pairs), with the very contexts the daemons use.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents import cli
from vswitch import config, pki


def tls(directory, name) -> config.TlsConfig:
    return config.TlsConfig(ca=str(directory / "ca.crt"), cert=str(directory / f"{name}.crt"),
                            key=str(directory / f"{name}.key"))


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1"):
    """Run a TLS handshake between the two contexts in memory; the refusing side raises ssl.SSLError."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj, incoming, outgoing in (("client", client, s_in, c_out), ("server", server, c_in, s_out)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            incoming.write(outgoing.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client's certificate after the client is done; a refusal
            # reaches the client as an alert on its first read.
            return client, server
    raise AssertionError("handshake did not finish")


def write_pair(directory, name, key, cert) -> None:
    (directory / f"{name}.key").write_bytes(pki.key_pem(key))
    (directory / f"{name}.crt").write_bytes(pki.cert_pem(cert))


@pytest.fixture
def ca(tmp_path):
    d = tmp_path / "pki"
    pki.init(d)
    pki.issue(d, "mapping", "mapping", ips=["127.0.0.1"])
    pki.issue(d, "host", "host-a", ips=["198.18.0.11"], dns=["host-a.lab"])
    return d


def test_issue_and_verify(ca):
    client, server = handshake(pki.server_context(tls(ca, "mapping")), pki.client_context(tls(ca, "host-a")))
    # Each side knows who the other is: the role is in the subject (OU), the name in CN.
    assert pki.peer_role(server.getpeercert()) == "host" and pki.peer_name(server.getpeercert()) == "host-a"
    assert pki.peer_role(client.getpeercert()) == "mapping"
    assert server.version() in ("TLSv1.2", "TLSv1.3")


def test_certificate_contents_and_files(ca):
    cert = x509.load_pem_x509_certificate((ca / "host-a.crt").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    assert pki.role_of(cert) == "host"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "host"
    assert cert.issuer == ca_cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.11")]
    assert sans.get_values_for_type(x509.DNSName) == ["host-a.lab"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = lambda c: (c.not_valid_after_utc - c.not_valid_before_utc).days  # noqa: E731
    assert days(cert) == 365 and days(ca_cert) == 3650
    for key in ("ca.key", "host-a.key", "mapping.key"):
        assert stat.S_IMODE(os.stat(ca / key).st_mode) == 0o600


def test_client_of_another_ca_is_refused(ca, tmp_path):
    other = tmp_path / "other"
    pki.init(other)
    pki.issue(other, "host", "intruder", ips=["198.18.0.99"])
    # The intruder trusts our CA (it can verify the server) but its own certificate is not ours.
    intruder = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    intruder.load_verify_locations(str(ca / "ca.crt"))
    intruder.load_cert_chain(str(other / "intruder.crt"), str(other / "intruder.key"))
    with pytest.raises(ssl.SSLError, match="certificate"):
        handshake(pki.server_context(tls(ca, "mapping")), intruder)
    # And a server of another CA is refused by our clients.
    pki.issue(other, "mapping", "fake-mapping", ips=["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki.server_context(tls(other, "fake-mapping")), pki.client_context(tls(ca, "host-a")))


def test_client_without_certificate_is_refused(ca):
    anonymous = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    with pytest.raises(ssl.SSLError, match="certificate"):
        handshake(pki.server_context(tls(ca, "mapping")), anonymous)


def test_expired_certificates_are_refused(ca):
    from cryptography.hazmat.primitives import serialization
    ca_key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    write_pair(ca, "old-host", *pki.issue_certificate(ca_key, ca_cert, "host", "old-host", ["198.18.0.12"],
                                                      now=long_ago))
    write_pair(ca, "old-mapping", *pki.issue_certificate(ca_key, ca_cert, "mapping", "old-mapping", ["127.0.0.1"],
                                                         now=long_ago))
    with pytest.raises(ssl.SSLError, match="expired"):  # an expired client
        handshake(pki.server_context(tls(ca, "mapping")), pki.client_context(tls(ca, "old-host")))
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):  # an expired server
        handshake(pki.server_context(tls(ca, "old-mapping")), pki.client_context(tls(ca, "host-a")))


def test_server_hostname_is_checked_against_ip_sans(ca):
    server, client = pki.server_context(tls(ca, "mapping")), pki.client_context(tls(ca, "host-a"))
    handshake(server, client, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(server, client, "127.0.0.2")
    # A valid certificate of another component cannot pose as the mapping daemon at its address.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki.server_context(tls(ca, "host-a")), client, "127.0.0.1")


def test_tls_1_2_is_the_minimum(ca):
    for context in (pki.server_context(tls(ca, "mapping")), pki.client_context(tls(ca, "host-a"))):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.verify_mode == ssl.CERT_REQUIRED


def test_refusals_are_clear_and_nothing_is_overwritten(ca, tmp_path):
    before = (ca / "ca.crt").read_bytes(), (ca / "host-a.key").read_bytes()
    with pytest.raises(pki.PkiError, match="has a CA already"):
        pki.init(ca)
    with pytest.raises(pki.PkiError, match="has a certificate already"):
        pki.issue(ca, "host", "host-a")
    with pytest.raises(pki.PkiError, match="CA's own name"):
        pki.issue(ca, "admin", "ca")
    with pytest.raises(pki.PkiError, match="unknown role"):
        pki.issue(ca, "root", "x")
    with pytest.raises(pki.PkiError, match="not a valid name"):
        pki.issue(ca, "host", "../escape")
    with pytest.raises(pki.PkiError, match="not an IP address"):
        pki.issue(ca, "host", "x", ips=["198.18.0"])
    with pytest.raises(pki.PkiError, match="create the CA first"):
        pki.issue(tmp_path / "empty", "host", "x")
    assert ((ca / "ca.crt").read_bytes(), (ca / "host-a.key").read_bytes()) == before
    assert not (ca / "x.crt").exists() and not (ca / "x.key").exists()
    with pytest.raises(pki.PkiError, match="no such file"):
        pki.server_context(config.TlsConfig(ca=str(ca / "ca.crt"), cert=str(ca / "nope.crt"), key=str(ca / "x")))


def test_vpc_pki_commands(tmp_path, capsys):
    d = str(tmp_path / "etc-pki")
    assert cli.main(["pki", "init", "--dir", d]) == 0
    assert cli.main(["pki", "issue", "edge", "edge-1", "--ip", "198.18.0.3", "--ip", "fd00::3",
                     "--dns", "edge.example", "--dir", d]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "etc-pki" / "edge-1.crt").read_bytes())
    assert pki.role_of(cert) == "edge"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["198.18.0.3", "fd00::3"]
    capsys.readouterr()
    assert cli.main(["pki", "init", "--dir", d]) == 2  # refused, with the reason
    assert "has a CA already" in capsys.readouterr().err
    assert cli.main(["pki", "issue", "edge", "edge-1", "--dir", d]) == 2
    assert "has a certificate already" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a role
        cli.main(["pki", "issue", "superuser", "x", "--dir", d])
