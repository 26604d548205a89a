"""A private certificate authority and the broker's server certificate for its TLS listener (`make_certs`, behind
`gridhub services certs --out DIR --host NAME`).

The CA's certificate (`ca.crt`) goes to every device and to the hub (`mqtts://...?cafile=ca.crt`); its key
(`ca.key`) signs the server certificate and then belongs offline. The server certificate names every host and
address the devices use (subject alternative names: a client checks the name it connected to against them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridhub.services.process import ServiceError, write_private

CA_DAYS = 3650
SERVER_DAYS = 825  # what Apple's and browsers' rules allow at most; renew with the same CA, devices keep working


@dataclass(frozen=True)
class CertFiles:
    """The PEM files `make_certs` writes."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(out: Path, hosts: Sequence[str], *, days: int = SERVER_DAYS) -> CertFiles:
    """Write ca.crt, ca.key, server.crt and server.key (keys 0600) into `out`: a new CA when `out` has none, else
    the existing one signs a new server certificate for `hosts` (DNS names or IP addresses)."""
    if not hosts:
        raise ServiceError("name at least one host the devices connect to: --host mqtt.example.org")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = CertFiles(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")
    now = dt.datetime.now(dt.UTC)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ServiceError(f"{files.ca_key} is not the EC key `gridhub services certs` writes: use another --out")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridhub broker CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_private(files.ca_key, _pem_key(ca_key).decode())
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(files.server_key, _pem_key(key).decode())
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
