"""TLS for the tests: a throwaway certificate authority, a server certificate for 127.0.0.1 and localhost
(made with ``cryptography``), and ``iothub serve`` started with them.

The TLS tests trust the authority, never the system's store: a client that
connects has checked the server's certificate chain and its name.
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

from .server import TEST_SECRET, RunningServer, free_port


@dataclass(frozen=True)
class Certificates:
    """PEM files: the authority's certificate (what clients trust), the server's certificate and its key,
    and a key that does not belong to that certificate."""

    ca: Path
    cert: Path
    key: Path
    other_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test authority and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certificates(directory: Path) -> Certificates:
    """Write the files into ``directory``; the certificates are valid from an hour ago for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iothub test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    made = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem", directory / "other-key.pem")
    made.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    made.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    made.key.write_bytes(_pem_key(server_key))
    made.other_key.write_bytes(_pem_key(ca_key))
    return made


def start_tls_server(log_dir: Path, certificates: Certificates) -> RunningServer:
    """``iothub serve`` on 127.0.0.1 with IOTHUB_TLS_CERT and IOTHUB_TLS_KEY; ready once ``/health`` answers over HTTPS."""
    port = free_port()
    environment = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": TEST_SECRET,
        "IOTHUB_ENV": "development",
        "IOTHUB_STORE": "memory",
        "IOTHUB_TLS_CERT": str(certificates.cert),
        "IOTHUB_TLS_KEY": str(certificates.key),
    }
    return RunningServer(port=port, env=environment, log_path=log_dir / "server.log", ssl_context=certificates.client_context())
