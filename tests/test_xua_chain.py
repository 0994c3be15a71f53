"""IdP signing certificates trusted through a chain to a configured root
(``OPENDMP_XUA_IDP_ROOTS``, e.g. the IGC Santé), not only as pinned leaf certificates:
RFC 5280 path validation by ``cryptography.x509.verification`` (soapstack/x509chain.py)."""
from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from test_xua_unit import INS, envelope_with, parsed

from soapstack.wssecurity import DS, FAILED_AUTHENTICATION, SecurityFault, verify_security
from xua.config import XuaSettings
from xua.idp import VihfClaims, build_vihf, sign_assertion

NOW = dt.datetime.now(dt.timezone.utc)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(cn: str, key, issuer=None, issuer_key=None, ca: bool = False,
          not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=365)):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=not ca,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                            encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   (issuer_key or key).public_key()), critical=False))
    return builder.sign(issuer_key or key, hashes.SHA256())


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """An IGC-Santé-like hierarchy: root -> intermediate -> IdP signer; plus an expired
    signer and a signer under a foreign root."""
    d = tmp_path_factory.mktemp("idp-pki")
    root_key, inter_key, foreign_key = _key(), _key(), _key()
    root = _cert("Test IGC Santé root", root_key, ca=True)
    inter = _cert("Test IGC Santé AC Organisations", inter_key, root, root_key, ca=True)
    foreign = _cert("Foreign root", foreign_key, ca=True)
    out = {"root": root, "inter": inter, "inter_key": inter_key}
    for name, issuer, issuer_key, kw in [
            ("signer", inter, inter_key, {}),
            ("expired", inter, inter_key, {"not_before": NOW - dt.timedelta(days=400),
                                           "not_after": NOW - dt.timedelta(days=1)}),
            ("foreign", foreign, foreign_key, {})]:
        key = _key()
        out[name] = (_pem_key(key), _cert(f"IdP {name}", key, issuer, issuer_key, **kw))
    (d / "roots.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    out["roots_file"] = d / "roots.pem"
    out["home"] = d
    return out


def _signed_by(key_pem: bytes, cert: x509.Certificate, intermediates=()) -> etree._Element:
    assertion = sign_assertion(build_vihf(VihfClaims(ins=INS)), key_pem,
                               cert.public_bytes(serialization.Encoding.PEM))
    # X509Data (outside the enveloped signature's digest) carries the intermediates
    x509_data = assertion.find(f".//{{{DS}}}KeyInfo/{{{DS}}}X509Data")
    for c in intermediates:
        etree.SubElement(x509_data, f"{{{DS}}}X509Certificate").text = \
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
    return assertion


def _policy(pki):
    settings = XuaSettings.from_env({"OPENDMP_XUA_IDP_ROOTS": str(pki["roots_file"])}, pki["home"])
    assert settings.mode == "required" and not settings.development_idp
    return settings.policy


def test_assertion_signed_by_a_certificate_chaining_to_a_trusted_root_is_accepted(pki):
    key, cert = pki["signer"]
    verified = verify_security(parsed(envelope_with(_signed_by(key, cert, [pki["inter"]]))),
                               _policy(pki))
    assert verified.issuer_certificate.subject == cert.subject


def test_missing_intermediate_is_refused(pki):
    key, cert = pki["signer"]
    with pytest.raises(SecurityFault) as info:
        verify_security(parsed(envelope_with(_signed_by(key, cert))), _policy(pki))
    assert info.value.subcode == FAILED_AUTHENTICATION and "untrusted" in info.value.reason


def test_expired_signer_under_the_trusted_root_is_refused(pki):
    key, cert = pki["expired"]
    with pytest.raises(SecurityFault) as info:
        verify_security(parsed(envelope_with(_signed_by(key, cert, [pki["inter"]]))),
                        _policy(pki))
    assert info.value.subcode == FAILED_AUTHENTICATION and "not valid at" in info.value.reason


def test_signer_under_a_foreign_root_is_refused(pki):
    key, cert = pki["foreign"]
    with pytest.raises(SecurityFault) as info:
        verify_security(parsed(envelope_with(_signed_by(key, cert))), _policy(pki))
    assert info.value.subcode == FAILED_AUTHENTICATION
    assert "does not chain to a trusted root" in info.value.reason


def test_a_certificate_whose_key_usage_forbids_signatures_is_refused(pki):
    """The intermediate CA chains to the root but its KeyUsage is keyCertSign/cRLSign only."""
    with pytest.raises(SecurityFault) as info:
        verify_security(parsed(envelope_with(_signed_by(_pem_key(pki["inter_key"]),
                                                        pki["inter"]))), _policy(pki))
    assert info.value.subcode == FAILED_AUTHENTICATION and "untrusted" in info.value.reason
