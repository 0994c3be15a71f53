"""Who is asking, for whom, how: the typed context built from a *verified* assertion.

Input is only what :func:`soapstack.wssecurity.verify_security` returns (signxml's
``signed_xml``), never the request's own copy of the assertion. Two profiles:

* ``vihf`` (the French DMP, VIHF 3.0; research/anchors.md §b): the professional's IdNatPs
  (``Subject/NameID``, OID 1.2.250.1.71.4.2.1), name (``subject-id``), profession
  (1.2.250.1.71.1.2.7, or ``AUTOMATE`` 1.2.250.1.213.1.1.4.6) and specialty
  (1.2.250.1.71.4.2.5) in the single ``subject:role`` attribute, ``Secteur_Activite``,
  ``Identifiant_Structure``, the patient's INS in ``resource-id`` (key checked by
  :mod:`pix.ins`), the access mode in ``purposeofuse`` (TRE_R248, 1.2.250.1.213.1.1.4.248),
  ``Authentification_Mode`` consistent with the AuthnContextClassRef, ``VIHF_Version``
  and the software's ``LPS_*`` identity — all required and well formed;
* ``xua`` (generic IHE XUA, ITI TF-2b §3.40.4.1.2: the NIST testkit, the Swiss EPR): the
  subject, at most one role and at most one purpose of use, the optional resource-id.

Both refuse several ``role`` or ``purposeofuse`` attributes or values (NIST ``secondrole``,
``secondpurposeofuse``). Refusals are :class:`~soapstack.wssecurity.SecurityFault`
(``wsse:FailedAuthentication``, the assertion is authentic but not acceptable).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from opendmp.policy import require_patient  # the access policy lives in one module
from soapstack.wssecurity import (
    FAILED_AUTHENTICATION,
    SAML2,
    SecurityFault,
    VerifiedSecurity,
)

HL7 = "urn:hl7-org:v3"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
CONSENT_IDS = ("urn:ihe:iti:bppc:2007:docid", "urn:ihe:iti:xua:2012:acp")

OID_IDNATPS = "1.2.250.1.71.4.2.1"
OID_PROFESSION = "1.2.250.1.71.1.2.7"
OID_SPECIALTY = "1.2.250.1.71.4.2.5"
OID_AUTOMATE = "1.2.250.1.213.1.1.4.6"
OID_SECTEUR = "1.2.250.1.71.4.2.4"
OID_ACCESS_MODE = "1.2.250.1.213.1.1.4.248"
ACCESS_MODES = frozenset({"normal", "bris_de_glace", "centre_15"})
AC = "urn:oasis:names:tc:SAML:2.0:ac:classes:"
#: Authentification_Mode -> acceptable AuthnContextClassRef (anchors.md §b: SmartcardPKI
#: for a direct CPS login, TLSClient for an indirect one, unspecified for an automate).
AUTHN_CONTEXTS = {
    "DIRECTE": frozenset({AC + "SmartcardPKI"}),
    "INDIRECTE": frozenset({AC + "TLSClient", AC + "unspecified"}),
    "INDIRECTE_RENFORCEE": frozenset({AC + "TLSClient", AC + "unspecified"}),
}


@dataclass(frozen=True)
class Code:
    code: str
    system: str
    display: str | None = None


@dataclass(frozen=True)
class IdentityContext:
    """The verified identity an actor acts on (all values from the signed assertion)."""

    profile: str
    issuer: str
    assertion_id: str
    subject_id: str  # Subject/NameID: the IdNatPs in the DMP
    subject_qualifier: str | None
    name: str | None
    authn_context: str
    profession: Code | None = None
    specialty: Code | None = None
    roles: tuple[Code, ...] = ()
    secteur: Code | None = None
    structure_id: str | None = None
    organization: str | None = None
    patient_id: str | None = None  # resource-id, HL7 CX
    access_mode: Code | None = None  # purposeofuse
    authentication_mode: str | None = None
    vihf_version: str | None = None
    software: dict[str, str] = field(default_factory=dict)  # LPS_*
    consent_references: tuple[str, ...] = ()
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @property
    def is_break_glass(self) -> bool:
        return self.access_mode is not None and self.access_mode.code == "bris_de_glace"


def _refuse(reason: str) -> SecurityFault:
    return SecurityFault(reason, FAILED_AUTHENTICATION)


def _attributes(signed: etree._Element) -> dict[str, list[etree._Element]]:
    """AttributeValue elements by Attribute Name; a name repeated is refused for the
    single-valued attributes by the callers (here they are merged and counted)."""
    out: dict[str, list[etree._Element]] = {}
    counts: dict[str, int] = {}
    for stmt in signed.findall(f"{{{SAML2}}}AttributeStatement"):
        for attr in stmt.findall(f"{{{SAML2}}}Attribute"):
            name = attr.get("Name") or ""
            counts[name] = counts.get(name, 0) + 1
            out.setdefault(name, []).extend(attr.findall(f"{{{SAML2}}}AttributeValue"))
    for name in (ROLE, PURPOSE, RESOURCE_ID, SUBJECT_ID, "Authentification_Mode",
                 "Identifiant_Structure", "Secteur_Activite", "VIHF_Version"):
        if counts.get(name, 0) > 1:
            raise _refuse(f"the assertion carries the attribute {name} more than once")
    return out


def _text(value: etree._Element) -> str:
    return "".join(value.itertext()).strip()


def _code(value: etree._Element, what: str) -> Code:
    """An HL7 CE inside an AttributeValue (``<Role code= codeSystem=>``)."""
    for el in value:
        if isinstance(el.tag, str) and el.get("code"):
            return Code(el.get("code"), el.get("codeSystem") or "", el.get("displayName"))
    raise _refuse(f"{what} is not an HL7 CE with a code")


def _single(attrs, name: str, what: str, required: bool) -> etree._Element | None:
    values = attrs.get(name, [])
    if len(values) > 1:
        raise _refuse(f"the assertion carries more than one {what} ({name})")
    if not values:
        if required:
            raise _refuse(f"the assertion has no {what} ({name})")
        return None
    return values[0]


def _single_text(attrs, name: str, what: str, required: bool = True) -> str | None:
    value = _single(attrs, name, what, required)
    if value is None:
        return None
    text = _text(value)
    if required and not text:
        raise _refuse(f"the assertion's {what} ({name}) is empty")
    return text or None


def check_patient_cx(cx: str) -> str:
    """The resource-id as an INS CX (``matricule^^^&OID&ISO^NH``), key checked."""
    from pix.ins import InsError, is_ins_oid, parse_matricule

    parts = cx.split("^")
    if len(parts) < 4:
        raise _refuse(f"resource-id {cx!r} is not an HL7 CX")
    authority = parts[3].split("&")
    oid = authority[1] if len(authority) > 1 else ""
    if not is_ins_oid(oid):
        raise _refuse(f"resource-id {cx!r}: {oid!r} is not an INS assigning authority")
    try:
        parse_matricule(parts[0], oid)
    except InsError as exc:
        raise _refuse(f"resource-id {cx!r}: {exc}") from None
    return cx


def build_identity(verified: VerifiedSecurity, profile: str = "vihf") -> IdentityContext | None:
    """The identity context of a verified request (None when no assertion was sent)."""
    signed = verified.assertion
    if signed is None:
        return None
    attrs = _attributes(signed)
    nameid = signed.find(f"{{{SAML2}}}Subject/{{{SAML2}}}NameID")
    authn = (signed.findtext(f"{{{SAML2}}}AuthnStatement/{{{SAML2}}}AuthnContext/"
                             f"{{{SAML2}}}AuthnContextClassRef") or "").strip()
    role_values = attrs.get(ROLE, [])
    roles = tuple(_code(v, "the subject role") for v in role_values)
    purpose = _single(attrs, PURPOSE, "purpose of use", required=profile == "vihf")
    access_mode = _code(purpose, "the purpose of use") if purpose is not None else None
    consent = tuple(_text(v) for name in CONSENT_IDS for v in attrs.get(name, []))
    common = dict(
        issuer=(signed.findtext(f"{{{SAML2}}}Issuer") or "").strip(),
        assertion_id=signed.get("ID"),
        subject_id=(nameid.text or "").strip() if nameid is not None else "",
        subject_qualifier=nameid.get("NameQualifier") if nameid is not None else None,
        name=_single_text(attrs, SUBJECT_ID, "subject name", required=profile == "vihf"),
        authn_context=authn, roles=roles, access_mode=access_mode,
        consent_references=consent,
        attributes={k: tuple(_text(v) for v in vs) for k, vs in attrs.items()},
    )
    if profile != "vihf":
        if len(roles) > 1:
            raise _refuse("the assertion carries more than one subject role")
        resource = _single_text(attrs, RESOURCE_ID, "patient (resource-id)", required=False)
        return IdentityContext(profile="xua", patient_id=resource,
                               organization=next((_text(v) for v in attrs.get(ORGANIZATION, [])),
                                                 None),
                               profession=roles[0] if roles else None, **common)
    # ---- VIHF 3.0
    if not common["subject_id"]:
        raise _refuse("the VIHF has no Subject/NameID (IdNatPs)")
    professions = [r for r in roles if r.system in (OID_PROFESSION, OID_AUTOMATE)]
    specialties = [r for r in roles if r.system == OID_SPECIALTY]
    others = [r for r in roles if r not in professions and r not in specialties]
    if len(professions) != 1:
        raise _refuse(f"the VIHF subject:role must carry exactly one profession "
                      f"({OID_PROFESSION}) (found {len(professions)})")
    if len(specialties) > 1 or others:
        raise _refuse("the VIHF subject:role carries a second specialty or an unknown code system")
    profession = professions[0]
    if profession.system == OID_PROFESSION and not profession.code.isdigit():
        raise _refuse(f"unknown profession code {profession.code!r}")
    if access_mode.system != OID_ACCESS_MODE or access_mode.code not in ACCESS_MODES:
        raise _refuse(f"unknown access mode {access_mode.code!r} in {access_mode.system!r} "
                      f"(TRE_R248: {', '.join(sorted(ACCESS_MODES))})")
    auth_mode = _single_text(attrs, "Authentification_Mode", "authentication mode")
    if auth_mode not in AUTHN_CONTEXTS:
        raise _refuse(f"unknown Authentification_Mode {auth_mode!r}")
    if authn not in AUTHN_CONTEXTS[auth_mode]:
        raise _refuse(f"Authentification_Mode {auth_mode} is inconsistent with the "
                      f"AuthnContextClassRef {authn}")
    secteur_text = _single_text(attrs, "Secteur_Activite", "sector of activity")
    code, _, system = secteur_text.partition("^")
    if not code or system != OID_SECTEUR:
        raise _refuse(f"Secteur_Activite {secteur_text!r} is not 'SAxx^{OID_SECTEUR}'")
    patient = check_patient_cx(_single_text(attrs, RESOURCE_ID, "patient (resource-id)"))
    software = {}
    for name in ("LPS_ID", "LPS_Nom", "LPS_Version", "LPS_ID_HOMOLOGATION_DMP"):
        value = _single_text(attrs, name, f"software identity {name}",
                             required=name in ("LPS_Nom", "LPS_Version"))
        if value:
            software[name] = value
    return IdentityContext(
        profile="vihf", profession=profession,
        specialty=specialties[0] if specialties else None,
        secteur=Code(code, system),
        structure_id=_single_text(attrs, "Identifiant_Structure", "structure (Identifiant_Structure)"),
        patient_id=patient, authentication_mode=auth_mode,
        vihf_version=_single_text(attrs, "VIHF_Version", "VIHF version", required=False),
        software=software, **common)


__all__ = ["Code", "IdentityContext", "build_identity", "require_patient", "check_patient_cx"]
