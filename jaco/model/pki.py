"""The cluster CA and the certificates it issues (node certs, operator-requested certs).

One node certificate serves three purposes: the jacod API's TLS server cert, and etcd's
peer cert (server and client side of mutual TLS) and client-port cert. Keys are ECDSA P-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jaco.errors import InvalidArgument

CA_VALID_DAYS = 3650
NODE_VALID_DAYS = 825


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex (what tokens pin)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def create_ca(cluster_id: str) -> KeyPair:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jaco"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"jaco cluster CA {cluster_id}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key))


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def node_hosts(name: str, *hosts: str) -> list[str]:
    """The names a node's certificate must cover: its name, its advertised hosts, loopback."""
    return [name, *hosts, "localhost", "127.0.0.1", "::1"]


def make_csr(common_name: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """A key and a CSR for it; returns (csr_pem, key_pem)."""
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(_san(hosts), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), key_to_pem(key)


def sign(
    ca: KeyPair,
    common_name: str,
    hosts: list[str],
    public_key: ec.EllipticCurvePublicKey,
    valid_days: int,
    server_and_client: bool = True,
) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("the cluster CA key is not an ECDSA key")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if server_and_client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(ca: KeyPair, common_name: str, hosts: list[str], valid_days: int) -> KeyPair:
    """A fresh key and a certificate for it, signed by the CA."""
    key = new_key()
    cert_pem = sign(ca, common_name, hosts, key.public_key(), valid_days)
    return KeyPair(cert_pem, key_to_pem(key))


def sign_csr(ca: KeyPair, csr_pem: bytes, common_name: str, hosts: list[str]) -> bytes:
    """Sign a joining node's CSR. Names come from the server's view, not the CSR's."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidArgument(f"the certificate request is not a valid PEM CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise InvalidArgument("the certificate request's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidArgument("the certificate request must carry an ECDSA P-256 key")
    return sign(ca, common_name, hosts, public_key, NODE_VALID_DAYS)


def cert_summary(cert_pem: bytes) -> dict[str, object]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
        dns += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns = []
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "serial": format(cert.serial_number, "x"),
        "common_name": str(cn[0].value) if cn else "",
        "dns_names": dns,
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
