"""A throwaway PKI and a real Kafka broker with TLS and SASL listeners, for the broker
security tests.

`make_pki` writes a CA, a broker certificate (SAN 127.0.0.1 and localhost) and a client
certificate (PEM, PKCS#8 keys) with the `cryptography` package; a second, unrelated CA
plays the wrong one. `SecureKafkaBroker` is `streams.demo.brokers.KafkaBroker` with three
client listeners besides the controller:

- PLAINTEXT (the readiness probe and the tests' own readers and writers),
- SSL with client certificates required (`ssl.client.auth=required`),
- SASL_SSL with SCRAM-SHA-512 and SCRAM-SHA-256 (users created at format time).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.demo.brokers import LOOPBACK, KafkaBroker, free_port

SCRAM_USER = "flapguard-svc"
SCRAM_PASSWORD = "scram-Pa55-3e1f9c-not-a-real-one"
KEY_PASSWORD = "key-Pa55-77ab02-not-a-real-one"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the broker and the client
    other_ca: Path  # a CA that signed nothing here
    broker: Path  # broker key + certificate chain (Kafka PEM keystore)
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # the same key, encrypted with KEY_PASSWORD


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                   critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("flapguard test CA")
    _, other_cert = _ca("some other CA")
    broker_key, broker_cert = _leaf(ca_key, ca_cert, "kafka-broker", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "flapguard-client", server=False)
    pki = Pki(ca=folder / "ca.pem", other_ca=folder / "other-ca.pem", broker=folder / "broker.pem",
              client_cert=folder / "client.pem", client_key=folder / "client.key",
              client_key_encrypted=folder / "client-encrypted.key")
    pki.ca.write_bytes(_pem_cert(ca_cert))
    pki.other_ca.write_bytes(_pem_cert(other_cert))
    pki.broker.write_bytes(_pem_key(broker_key) + _pem_cert(broker_cert) + _pem_cert(ca_cert))
    pki.client_cert.write_bytes(_pem_cert(client_cert))
    pki.client_key.write_bytes(_pem_key(client_key))
    pki.client_key_encrypted.write_bytes(_pem_key(client_key, KEY_PASSWORD))
    for path in (pki.broker, pki.client_key, pki.client_key_encrypted):
        path.chmod(0o600)
    return pki


class SecureKafkaBroker(KafkaBroker):
    """KafkaBroker with SSL (client certificates required) and SASL_SSL (SCRAM) listeners."""

    def __init__(self, pki: Pki, **kwargs: object) -> None:
        scram = [arg for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256")
                 for arg in ("--add-scram", f"{mechanism}=[name={SCRAM_USER},password={SCRAM_PASSWORD}]")]
        super().__init__(format_args=scram, **kwargs)  # type: ignore[arg-type]
        self.pki = pki
        self.ssl_port = 0
        self.sasl_port = 0

    def server_properties(self, workdir: Path) -> dict[str, str]:
        props = super().server_properties(workdir)
        taken = {self.port, self.controller_port}
        while not self.ssl_port or self.ssl_port in taken:
            self.ssl_port = free_port()
        taken.add(self.ssl_port)
        while not self.sasl_port or self.sasl_port in taken:
            self.sasl_port = free_port()
        plain = f"PLAINTEXT://{LOOPBACK}:{self.port}"
        ssl = f"SSL://{LOOPBACK}:{self.ssl_port}"
        sasl = f"SASL_SSL://{LOOPBACK}:{self.sasl_port}"
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props.update({
            "listeners": f"{plain},CONTROLLER://{LOOPBACK}:{self.controller_port},{ssl},{sasl}",
            "advertised.listeners": f"{plain},{ssl},{sasl}",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.pki.broker),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
        })
        return props

    @property
    def ssl_servers(self) -> str:
        return f"{LOOPBACK}:{self.ssl_port}"

    @property
    def sasl_servers(self) -> str:
        return f"{LOOPBACK}:{self.sasl_port}"
