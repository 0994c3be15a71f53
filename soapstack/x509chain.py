"""X.509 path validation against configured trust anchors (RFC 5280 §6), by
``cryptography.x509.verification`` — never by hand.

Used for signing certificates: the XUA identity providers' (assertions signed by a
certificate that chains to a configured root, e.g. the IGC Santé, besides pinned leaf
certificates) and the DSG signers' (XAdES-signed submission sets). The end-entity policy
is cryptography's "permit all" with one rule, the one a signature needs: a KeyUsage
extension, when present, must allow ``digitalSignature`` or ``nonRepudiation``
(RFC 5280 §4.2.1.3); CAs get the Web PKI CA profile (BasicConstraints, keyCertSign...).
Validity periods of every certificate of the path are checked at ``when``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)


class ChainError(ValueError):
    """The certificate does not chain to a trust anchor (the message says why)."""


def _signature_key_usage(policy, cert, key_usage: x509.KeyUsage | None) -> None:
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        raise ValueError("the certificate's KeyUsage allows neither digitalSignature nor "
                         "nonRepudiation")


_EE_POLICY = ExtensionPolicy.permit_all().may_be_present(
    x509.KeyUsage, Criticality.AGNOSTIC, _signature_key_usage)


def load_anchors(paths: str | Iterable[str | Path]) -> tuple[x509.Certificate, ...]:
    """PEM certificates (bundles allowed) from files named in a ``,``/path-separator list."""
    import os

    names = ([p for chunk in paths.split(",") for p in chunk.split(os.pathsep)]
             if isinstance(paths, str) else [str(p) for p in paths])
    certs: list[x509.Certificate] = []
    for name in (n.strip() for n in names):
        if name:
            certs.extend(x509.load_pem_x509_certificates(Path(name).read_bytes()))
    return tuple(certs)


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 anchors: Sequence[x509.Certificate], when: datetime | None = None
                 ) -> list[x509.Certificate]:
    """The validated path ``[leaf, ..., anchor]``; raises :class:`ChainError`."""
    if not anchors:
        raise ChainError("no trust anchor is configured")
    when = when or datetime.now(timezone.utc)
    for cert in [leaf, *intermediates]:
        if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
            raise ChainError(f"certificate {cert.subject.rfc4514_string()} is not valid at "
                             f"{when:%Y-%m-%dT%H:%M:%SZ} (valid "
                             f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                             f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
    verifier = (PolicyBuilder().store(Store(list(anchors)))
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=_EE_POLICY)
                .time(when).build_client_verifier())
    try:
        return list(verifier.verify(leaf, list(intermediates)).chain)
    except VerificationError as exc:
        raise ChainError(f"certificate {leaf.subject.rfc4514_string()} does not chain to a "
                         f"trusted root: {exc}") from None


__all__ = ["ChainError", "load_anchors", "verify_chain"]
