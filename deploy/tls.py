"""The stack's own certificate authority and nginx's server certificate, made by the first `make up`.

    var/tls/ca.pem          the local CA's certificate: what a client trusts (curl --cacert var/tls/ca.pem)
    var/tls/ca-key.pem      its private key (owner only); it signs every server certificate of this checkout
    var/tls/server.pem      nginx's certificate: localhost, 127.0.0.1, ::1 and the stack's names
    var/tls/server-key.pem  its private key

The CA is made once and kept, so a browser told to trust it keeps trusting the stack. The server certificate is
made again when it names other hosts than the site needs, or is close to expiring. Keys are ECDSA P-256: the
smallest certificates and the cheapest handshakes every current client supports. Nothing here is committed
(var/ is ignored); nothing here asks a network (no OCSP, no CRL: a local CA has nobody to ask).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stack.topology import ZONE, Site, TlsFiles

CA_DAYS = 10 * 365
# Browsers refuse server certificates valid for longer than 398 days (CA/Browser Forum), local CAs included.
SERVER_DAYS = 397
RENEW_DAYS = 30  # a server certificate with fewer days left is made again


def server_names(site: Site) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) nginx's certificate must name: what clients on this machine and the stack's own
    containers use to reach nginx."""
    names = ["localhost", "nginx", ZONE, f"nginx.{ZONE}"]
    addresses = ["127.0.0.1", "::1", site.public_host]
    return list(dict.fromkeys(names)), list(dict.fromkeys(addresses))


def ensure(site: Site) -> TlsFiles:
    """The CA (made if missing) and a current server certificate for the site (made if missing, stale or naming
    other hosts). Returns where they are."""
    where = site.tls
    where.directory.mkdir(parents=True, exist_ok=True)
    where.directory.chmod(0o700)
    if not (where.ca.exists() and where.ca_key.exists()):
        _make_ca(where)
    names, addresses = server_names(site)
    if not _current(where, names, addresses):
        _make_server(where, names, addresses)
    return where


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, mode: int) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(mode)


def _make_ca(where: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "python-web-stack (local)"),
        # The host in the name: two machines' CAs are told apart in a browser's certificate list.
        x509.NameAttribute(NameOID.COMMON_NAME, f"python-web-stack local CA on {socket.gethostname()[:30]}"),
    ])
    now = _now()
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        # path_length 0: it signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(where.ca_key, key, 0o600)
    where.ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    where.ca.chmod(0o644)
    where.certificate.unlink(missing_ok=True)  # signed by a CA that is gone


def _current(where: TlsFiles, names: list[str], addresses: list[str]) -> bool:
    """True when the server certificate exists, is signed by this CA, names exactly these hosts and has more than
    RENEW_DAYS left."""
    try:
        certificate = x509.load_pem_x509_certificate(where.certificate.read_bytes())
        ca = x509.load_pem_x509_certificate(where.ca.read_bytes())
        where.key.stat()
    except (OSError, ValueError):
        return False
    try:
        certificate.verify_directly_issued_by(ca)
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.InvalidSignature, x509.ExtensionNotFound):
        return False
    named = (set(alternative.get_values_for_type(x509.DNSName)),
             {str(a) for a in alternative.get_values_for_type(x509.IPAddress)})
    wanted = (set(names), {str(ipaddress.ip_address(a)) for a in addresses})
    return named == wanted and certificate.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)


def _make_server(where: TlsFiles, names: list[str], addresses: list[str]) -> None:
    ca_key = serialization.load_pem_private_key(where.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"[tls] {where.ca_key} is not this stack's CA key; remove {where.directory} to start over")
    ca = x509.load_pem_x509_certificate(where.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject).public_key(public).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
            critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # Readable by others: Compose bind-mounts it as a secret into nginx's container, where nginx runs as an
    # unprivileged user (the directory itself stays the owner's alone, like var/secrets).
    _write_key(where.key, key, 0o644)
    where.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    where.certificate.chmod(0o644)
