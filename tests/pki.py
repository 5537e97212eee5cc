"""A throwaway certificate authority for tests: SPIFFE workload certificates and a server cert.

``TestCA.workload(ns, sa)`` issues a client certificate whose only URI SAN is
``spiffe://<trust domain>/ns/<ns>/sa/<sa>``, as Istio's CA does; ``TestCA.server()`` issues a
certificate for ``127.0.0.1`` / ``localhost`` for a listener. Everything is written as PEM
files into one directory, so Envoy (``filename:``) and ``ssl`` (``load_cert_chain``) read the
same bytes.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "TestCA"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files."""

    cert: Path
    key: Path
    uri: str = ""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class TestCA:
    """A self-signed root that issues leaf certificates into ``directory``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, directory: Path, *, trust_domain: str = "cluster.local", name: str = "test-ca"
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _key()
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        self._name = subject
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        stem: str,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        common_name: str = "",
    ) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "extauthz-tests")]
        if common_name:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 7 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        uris = [s.value for s in sans if isinstance(s, x509.UniformResourceIdentifier)]
        return Issued(cert_path, key_path, uris[0] if uris else "")

    def workload(self, namespace: str, service_account: str) -> Issued:
        """A client certificate for ``spiffe://<td>/ns/<namespace>/sa/<service_account>``."""
        uri = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        return self._issue(
            f"{namespace}.{service_account}",
            [x509.UniformResourceIdentifier(uri)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    def client(self, uri: str, stem: str) -> Issued:
        """A client certificate whose only URI SAN is ``uri``, written as ``<stem>.pem``."""
        return self._issue(
            stem, [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def server(self, name: str = "server") -> Issued:
        """A server certificate valid for 127.0.0.1 and localhost."""
        return self._issue(
            name,
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
            ExtendedKeyUsageOID.SERVER_AUTH,
            common_name="localhost",
        )

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """An ``ssl`` context that trusts this CA and presents ``client`` when given."""
        context = ssl.create_default_context(cafile=str(self.cert))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context
