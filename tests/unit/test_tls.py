"""deploy/tls.py: the local CA made once and kept, nginx's certificate made again only when it must be."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy import tls
from stack.topology import Site


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_ca_signs_a_server_certificate_for_the_stacks_names_that_a_client_verifies(tmp_path):
    site = Site(public_host="127.0.31.1", var=tmp_path)
    files = tls.ensure(site)
    ca, server = load(files.ca), load(files.certificate)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "nginx", "stack.internal", "nginx.stack.internal"} == set(names.get_values_for_type(
        x509.DNSName))
    assert {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "127.0.31.1")} == set(
        names.get_values_for_type(x509.IPAddress))
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=398)  # what browsers accept
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600 and stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    # Python's own TLS stack loads the pair and trusts the chain by the CA alone.
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(files.certificate, files.key)
    client_side = ssl.create_default_context(cafile=str(files.ca))
    assert client_side.cert_store_stats()["x509_ca"] == 1


def test_a_second_run_keeps_both_and_other_names_remake_only_the_server_certificate(tmp_path):
    files = tls.ensure(Site(var=tmp_path))
    ca, first = files.ca.read_bytes(), files.certificate.read_bytes()
    tls.ensure(Site(var=tmp_path))
    assert files.ca.read_bytes() == ca and files.certificate.read_bytes() == first
    tls.ensure(Site(public_host="127.0.32.1", var=tmp_path))  # another public address: new names
    assert files.ca.read_bytes() == ca and files.certificate.read_bytes() != first
    load(files.certificate).verify_directly_issued_by(load(files.ca))


def test_a_certificate_near_its_end_or_from_another_ca_is_made_again(tmp_path, monkeypatch):
    files = tls.ensure(Site(var=tmp_path))
    first = files.certificate.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=tls.SERVER_DAYS - tls.RENEW_DAYS + 1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    tls.ensure(Site(var=tmp_path))
    assert files.certificate.read_bytes() != first
    monkeypatch.undo()
    files.ca.unlink()  # a new CA: every certificate the old one signed is made again
    tls.ensure(Site(var=tmp_path))
    load(files.certificate).verify_directly_issued_by(load(files.ca))
