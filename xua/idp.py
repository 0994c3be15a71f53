"""The development identity provider: VIHF 3.0 assertions signed with python-xmlsec.

``opendmp idp issue --profession 10 --ins 1234567890123 --mode normal`` prints a signed
SAML 2.0 assertion. Its key and self-signed certificate are created on first use under
``$OPENDMP_HOME/xua/`` (key mode 0600); the development server trusts this certificate
unless ``OPENDMP_XUA_TRUSTED_IDPS`` names the production identity providers.

The assertion follows the VIHF attribute names of ANS (research/anchors.md §b, the
DRIMbox/Pro Santé Connect ``VihfBuilder``): one ``subject:role`` attribute with the
profession and, for physicians and pharmacists, the specialty; ``resource-id`` the
patient's INS as an HL7 CX; ``purposeofuse`` the access mode; ``Authentification_Mode``
with a consistent ``AuthnContextClassRef``. The signature is enveloped, RSA-SHA256,
exclusive c14n with ``InclusiveNamespaces PrefixList="xs xsi"`` (deps.md §3: python-xmlsec
writes it, signxml and xmlsec1 verify it).
"""
from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
HL7 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XS = "http://www.w3.org/2001/XMLSchema"
DEV_AUDIENCE = "urn:opendmp:dev"
DEV_ISSUER = "CN=OpenDMP development IdP,O=OpenDMP"

ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"

#: Authentification_Mode -> AuthnContextClassRef the IdP writes (xua.identity accepts these).
AUTHN_CLASS = {
    "DIRECTE": "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
    "INDIRECTE": "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient",
    "INDIRECTE_RENFORCEE": "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient",
}
MODES = {"normal": "Accès normal", "bris_de_glace": "Accès en urgence (bris de glace)",
         "centre_15": "Accès en régulation médicale (centre 15)"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ key and certificate

@dataclass(frozen=True)
class IdpFiles:
    key: Path
    cert: Path


def dev_idp_files(home: Path) -> IdpFiles:
    """The development IdP's key and certificate, created on first use (key 0600)."""
    directory = Path(home) / "xua"
    files = IdpFiles(directory / "dev-idp-key.pem", directory / "dev-idp-cert.pem")
    if files.key.exists() and files.cert.exists():
        return files
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:  # gunicorn workers start together
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (files.key.exists() and files.cert.exists()):
            _create(files)
    return files


def _create(files: IdpFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenDMP"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "OpenDMP development IdP")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=5 * 365))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    tmp = files.key.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp, files.key)
    tmp = files.cert.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, files.cert)


# ------------------------------------------------------------------ the assertion

@dataclass
class VihfClaims:
    """What the development IdP asserts (VIHF 3.0 attribute values)."""

    ins: str
    profession: str = "10"
    specialty: str | None = "SM26"
    mode: str = "normal"
    ins_oid: str = "1.2.250.1.213.1.4.10"
    ps_id: str = "810001234567"  # IdNatPs: 8 + RPPS
    name: str = "DOCTEUR Jean"
    secteur: str = "SA07"
    structure: str = "1060016219"
    auth_mode: str = "INDIRECTE"
    audience: str | None = DEV_AUDIENCE
    lps_id: str = "OPENDMP-DEV"
    lps_name: str = "OpenDMP development client"
    lps_version: str = "1.0"
    lps_homologation: str = "DEV-0000"
    lifetime: dt.timedelta = dt.timedelta(hours=1)
    issue_instant: dt.datetime | None = None
    not_before: dt.datetime | None = None
    not_on_or_after: dt.datetime | None = None
    extra_attributes: list[tuple[str, str]] = field(default_factory=list)


def _attr(parent: etree._Element, name: str, values: list) -> etree._Element:
    attr = etree.SubElement(parent, f"{{{SAML2}}}Attribute", Name=name)
    for value in values:
        av = etree.SubElement(attr, f"{{{SAML2}}}AttributeValue")
        if isinstance(value, etree._Element):
            av.append(value)
        else:
            av.set(f"{{{XSI}}}type", "xs:string")
            av.text = value
    return attr


def _ce(tag: str, code: str, system: str, display: str | None = None) -> etree._Element:
    el = etree.Element(f"{{{HL7}}}{tag}", nsmap={None: HL7})
    el.set(f"{{{XSI}}}type", "CE")
    el.set("code", code)
    el.set("codeSystem", system)
    if display:
        el.set("displayName", display)
    return el


def build_vihf(claims: VihfClaims, issuer: str = DEV_ISSUER) -> etree._Element:
    """An unsigned VIHF 3.0 assertion (sign it with :func:`sign_assertion`)."""
    issued = claims.issue_instant or _now()
    a = etree.Element(f"{{{SAML2}}}Assertion", nsmap={"saml2": SAML2, "xs": XS, "xsi": XSI})
    a.set("ID", f"_{uuid.uuid4()}")
    a.set("IssueInstant", _ts(issued))
    a.set("Version", "2.0")
    iss = etree.SubElement(a, f"{{{SAML2}}}Issuer",
                           Format="urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName")
    iss.text = issuer
    subject = etree.SubElement(a, f"{{{SAML2}}}Subject")
    nameid = etree.SubElement(subject, f"{{{SAML2}}}NameID", NameQualifier="1.2.250.1.71.4.2.1",
                              Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified")
    nameid.text = claims.ps_id
    conf = etree.SubElement(subject, f"{{{SAML2}}}SubjectConfirmation",
                            Method="urn:oasis:names:tc:SAML:2.0:cm:bearer")
    del conf
    cond = etree.SubElement(a, f"{{{SAML2}}}Conditions")
    cond.set("NotBefore", _ts(claims.not_before or issued))
    cond.set("NotOnOrAfter", _ts(claims.not_on_or_after or issued + claims.lifetime))
    if claims.audience:
        restriction = etree.SubElement(cond, f"{{{SAML2}}}AudienceRestriction")
        etree.SubElement(restriction, f"{{{SAML2}}}Audience").text = claims.audience
    authn = etree.SubElement(a, f"{{{SAML2}}}AuthnStatement", AuthnInstant=_ts(issued))
    ctx = etree.SubElement(authn, f"{{{SAML2}}}AuthnContext")
    etree.SubElement(ctx, f"{{{SAML2}}}AuthnContextClassRef").text = AUTHN_CLASS[claims.auth_mode]
    stmt = etree.SubElement(a, f"{{{SAML2}}}AttributeStatement")
    _attr(stmt, "Identifiant_Structure", [claims.structure])
    _attr(stmt, "Secteur_Activite", [f"{claims.secteur}^1.2.250.1.71.4.2.4"])
    _attr(stmt, SUBJECT_ID, [claims.name])
    roles = [_ce("Role", claims.profession, "1.2.250.1.71.1.2.7")]
    if claims.specialty:
        roles.append(_ce("Role", claims.specialty, "1.2.250.1.71.4.2.5"))
    _attr(stmt, ROLE, roles)
    _attr(stmt, "VIHF_Version", ["3.0"])
    _attr(stmt, "Authentification_Mode", [claims.auth_mode])
    _attr(stmt, RESOURCE_ID, [f"{claims.ins}^^^&{claims.ins_oid}&ISO^NH"])
    _attr(stmt, "Ressource_URN", ["urn:dmp"])
    _attr(stmt, PURPOSE, [_ce("PurposeOfUse", claims.mode, "1.2.250.1.213.1.1.4.248",
                              MODES.get(claims.mode))])
    _attr(stmt, "LPS_ID", [claims.lps_id])
    _attr(stmt, "LPS_Nom", [claims.lps_name])
    _attr(stmt, "LPS_Version", [claims.lps_version])
    _attr(stmt, "LPS_ID_HOMOLOGATION_DMP", [claims.lps_homologation])
    for name, value in claims.extra_attributes:
        _attr(stmt, name, [value])
    return a


def sign_assertion(assertion: etree._Element, key_pem: bytes, cert_pem: bytes,
                   sha1: bool = False) -> etree._Element:
    """Enveloped XML-DSig of ``assertion`` (placed after Issuer, SAML Core §5.4.1)."""
    import xmlsec

    signature = xmlsec.template.create(
        assertion, xmlsec.Transform.EXCL_C14N,
        xmlsec.Transform.RSA_SHA1 if sha1 else xmlsec.Transform.RSA_SHA256, ns="ds")
    issuer = assertion.find(f"{{{SAML2}}}Issuer")
    issuer.addnext(signature)
    ref = xmlsec.template.add_reference(
        signature, xmlsec.Transform.SHA1 if sha1 else xmlsec.Transform.SHA256,
        uri="#" + assertion.get("ID"))
    xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
    c14n = xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    xmlsec.template.transform_add_c14n_inclusive_namespaces(c14n, ["xs", "xsi"])
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.add_x509_data(key_info)
    ctx = xmlsec.SignatureContext()
    ctx.register_id(assertion, "ID")
    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    key.load_cert_from_memory(cert_pem, xmlsec.KeyFormat.PEM)
    ctx.key = key
    ctx.sign(signature)
    # Nodes python-xmlsec created (KeyInfo, X509Data...) come from its own libxml2 copy and
    # lxml's find() does not see them (deps.md §3: two libxml2 in one process): hand back
    # a re-parsed tree (the bytes, hence the signature, are unchanged).
    return etree.fromstring(etree.tostring(assertion))


def issue(home: Path, claims: VihfClaims, mutate=None) -> etree._Element:
    """A signed VIHF assertion from the development IdP; ``mutate(assertion)`` may edit
    the unsigned assertion first (tests build the NIST XUA variants this way)."""
    files = dev_idp_files(home)
    assertion = build_vihf(claims)
    if mutate is not None:
        mutate(assertion)
    return sign_assertion(assertion, files.key.read_bytes(), files.cert.read_bytes())


def security_header(assertion: etree._Element) -> etree._Element:
    """A ``wsse:Security`` header (mustUnderstand) carrying ``assertion``."""
    from soapstack.namespaces import SOAP12, WSSE

    sec = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
    sec.set(f"{{{SOAP12}}}mustUnderstand", "true")
    sec.append(assertion)
    return sec
