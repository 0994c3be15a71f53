"""Node authentication (ITI-19) foundations: a development CA, node certificates, and the
TLS contexts every OpenDMP TLS endpoint uses (TLS 1.2 or newer, client certificates
required and checked against the trust store).

Files under ``$OPENDMP_HOME/pki/`` (``opendmp ca init`` / ``opendmp ca issue NAME``)::

    ca.pem ca.key           the development CA (EC P-256), trust store by default
    <name>.pem <name>.key   node certificates (serverAuth + clientAuth), SAN localhost,
                            127.0.0.1 and any --host given

Production sets ``OPENDMP_TLS_CERT``, ``OPENDMP_TLS_KEY`` and ``OPENDMP_TLS_CA`` (a PEM
bundle of trusted CAs) to its own files; ``opendmp serve`` creates the development PKI
only when none of them is set, and says so in its log.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("opendmp.pki")

NODE = "node"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path
    development: bool = False


def pki_dir(home: Path) -> Path:
    return home / "pki"


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def init_ca(directory: Path, common_name: str = "OpenDMP development CA") -> Path:
    """Create ``ca.pem``/``ca.key`` in ``directory`` unless they exist; returns ca.pem."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_pem = directory / "ca.pem"
    if ca_pem.exists() and (directory / "ca.key").exists():
        return ca_pem
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenDMP")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(directory / "ca.key", key)
    ca_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_pem


def issue(directory: Path, name: str, hosts: list[str] | None = None,
          days: int = 825) -> tuple[Path, Path]:
    """A node certificate ``<name>.pem``/``<name>.key`` signed by the CA in ``directory``."""
    init_ca(directory)
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", *(hosts or [])]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenDMP")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(directory / f"{name}.key", key)
    pem = directory / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem, directory / f"{name}.key"


def tls_files(env: Mapping[str, str], home: Path, create: bool = True) -> TlsFiles:
    """The node's TLS files: ``OPENDMP_TLS_*`` when set, else the development PKI."""
    cert, key, ca = (env.get("OPENDMP_TLS_CERT"), env.get("OPENDMP_TLS_KEY"), env.get("OPENDMP_TLS_CA"))
    if cert or key or ca:
        if not (cert and key and ca):
            raise ValueError("set all of OPENDMP_TLS_CERT, OPENDMP_TLS_KEY and OPENDMP_TLS_CA")
        return TlsFiles(Path(cert), Path(key), Path(ca))
    directory = pki_dir(home)
    node_pem, node_key = directory / f"{NODE}.pem", directory / f"{NODE}.key"
    if create and not (node_pem.exists() and node_key.exists()):
        issue(directory, NODE)
        log.warning("TLS: created a DEVELOPMENT CA and node certificate in %s "
                    "(set OPENDMP_TLS_CERT/KEY/CA for production)", directory)
    return TlsFiles(node_pem, node_key, directory / "ca.pem", development=True)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Mutual TLS, server side: TLS >= 1.2, client certificate required from the trust store."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Mutual TLS, client side: our node certificate, the server checked against the trust store."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.load_verify_locations(cafile=str(files.ca))
    return ctx


def subject_of(cert: dict | None) -> str | None:
    """``ssl.getpeercert()`` subject as ``CN=...,O=...`` (the same form soapstack uses)."""
    if not cert:
        return None
    return ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
