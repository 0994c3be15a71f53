"""A CDA R2 document's header, read once (HL7 CDA R2 §4.2; ANS CI-SIS "Structuration
minimale des documents de santé" for the French header conventions).

Everything else in :mod:`cda` reads the header through :class:`CdaHeader` instead of
XPath-ing the XML itself: the metadata derivation (:mod:`cda.metadata`), the ITI-41
cross-check (:mod:`cda.crosscheck`), our header rules (:mod:`cda.validation`) and the
renderer all agree on what "the patient", "the author" or "the creation time" of a
document is. Parsing goes through the hostile-input-safe parser of :mod:`soapstack.xml`
(no DTD, no entities, no network).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from lxml import etree

from soapstack.xml import SAFE_OPTIONS, XmlRejected, has_doctype, parse_xml

V3 = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"v3": V3, "xsi": XSI}
CLINICAL_DOCUMENT = f"{{{V3}}}ClinicalDocument"

#: INS assigning authorities (ANS, "Référentiel INS"): NIR, NIA, and the test/demo OIDs.
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS = (INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO)
#: national identifier of health professionals (RPPS/ADELI, "idNatPS", ANS TRE_G08).
PS_NATIONAL_ID = "1.2.250.1.71.4.2.1"
#: national identifier of health structures (FINESS/SIRET/..., "idNatSt").
ST_NATIONAL_ID = "1.2.250.1.71.4.2.2"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"
#: CI-SIS "conformité CI-SIS" header templateId: marks a French document.
CISIS_TEMPLATE = "1.2.250.1.213.1.1.1.1"

#: largest CDA accepted for parsing (the biggest CI-SIS example is 1.6 MB).
MAX_CDA_BYTES = 32 * 1024 * 1024


class CdaError(ValueError):
    """Not a CDA document we can read; the message says why."""


# ---------------------------------------------------------------------------- INS key

def ins_key_ok(ins: str) -> bool:
    """Whether a 15-character INS (NIR or NIA: 13 characters + 2-digit key) has a valid key.

    key = 97 - (NIR mod 97), with Corsica's department ``2A``/``2B`` read as 19/18
    (INSEE). A pure function; :mod:`pix.ins` (when present) is preferred by callers.
    """
    if len(ins) != 15 or not ins[13:].isdigit():
        return False
    body = ins[:13].upper()
    if body[5:7] in ("2A", "2B"):
        body = body[:5] + ("19" if body[5:7] == "2A" else "18") + body[7:]
    if not body.isdigit():
        return False
    return 97 - int(body) % 97 == int(ins[13:])


def ins_problem(value: str | None, oid: str | None = None) -> str | None:
    """None when ``value`` is a valid matricule INS, else why not. Uses :mod:`pix.ins`
    (the PIX issue's INS rules) when it is there, else :func:`ins_key_ok`."""
    if not value:
        return "the INS has no value (extension)"
    try:
        from pix.ins import InsError, parse_matricule
    except ImportError:
        return None if ins_key_ok(value) else \
            f"{value!r} is not 13 characters plus a valid 2-digit key"
    try:
        parse_matricule(value, oid)
    except InsError as exc:
        return str(exc)
    return None


def check_ins_key(value: str) -> bool:
    return ins_problem(value) is None


# ---------------------------------------------------------------------------- times

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def ts_to_dtm(value: str | None) -> str | None:
    """HL7 v3 TS (``20210401171000+0100``) -> XDS DTM in UTC (``20210401161000``).

    Without a zone the local value is kept as is; a date without time keeps its precision.
    """
    if not value:
        return None
    m = _TS.match(value.strip())
    if not m:
        return None
    parts = [p for p in m.groups()[:6] if p]
    digits = "".join(parts)
    zone = m.group(7)
    if not zone or len(digits) < 10:
        return digits
    hour = int(m.group(4))
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    local = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), hour, minute, second)
    sign = 1 if zone[0] == "+" else -1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
    utc = local - sign * offset
    return utc.strftime("%Y%m%d%H%M%S")[:len(digits)]


def ts_valid(value: str | None, min_digits: int = 8) -> bool:
    if not value:
        return False
    m = _TS.match(value.strip())
    if not m:
        return False
    digits = "".join(p for p in m.groups()[:6] if p)
    if len(digits) < min_digits:
        return False
    try:
        datetime.strptime(digits[:8], "%Y%m%d")
    except ValueError:
        return False
    return True


def ts_human(value: str | None) -> str:
    """``20210401171000+0100`` -> ``01/04/2021 17:10 (+0100)`` for people."""
    if not value:
        return ""
    m = _TS.match(value.strip())
    if not m:
        return value
    y, mo, d, h, mi = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
    out = "/".join(p for p in (d, mo, y) if p)
    if h:
        out += f" {h}:{mi or '00'}"
    if m.group(7):
        out += f" ({m.group(7)})"
    return out


# ---------------------------------------------------------------------------- model

@dataclass(slots=True)
class II:
    root: str
    extension: str | None = None

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


@dataclass(slots=True)
class CD:
    code: str
    system: str | None = None
    display: str | None = None


@dataclass(slots=True)
class Person:
    """An author / legal authenticator / performer: ids, names, specialty, organization."""

    ids: list[II] = field(default_factory=list)
    family: str | None = None
    given: str | None = None
    prefix: str | None = None
    code: CD | None = None
    function: CD | None = None
    organization_ids: list[II] = field(default_factory=list)
    organization_name: str | None = None
    practice_setting: CD | None = None
    time: str | None = None
    device: str | None = None

    @property
    def national_id(self) -> II | None:
        return next((i for i in self.ids if i.root == PS_NATIONAL_ID and i.extension), None)

    @property
    def display_name(self) -> str:
        name = " ".join(p for p in (self.prefix, self.given, self.family) if p)
        return name or self.device or (str(self.ids[0]) if self.ids else "")


@dataclass(slots=True)
class Patient:
    ids: list[II] = field(default_factory=list)
    family: str | None = None
    given: str | None = None
    gender: str | None = None
    birth_time: str | None = None

    @property
    def ins(self) -> II | None:
        return next((i for i in self.ids if i.root in INS_OIDS), None)


@dataclass(slots=True)
class CdaHeader:
    """What the XDS metadata, our header rules and the renderer need from a CDA header."""

    root: etree._Element
    id: II | None
    code: CD | None
    title: str | None
    effective_time: str | None
    confidentiality: CD | None
    language: str | None
    set_id: II | None
    version: str | None
    template_ids: list[str]
    realm: str | None
    patient: Patient
    authors: list[Person]
    custodian_ids: list[II]
    custodian_name: str | None
    legal_authenticator: Person | None
    service_events: list[tuple[CD | None, str | None, str | None, list[Person]]]
    facility_type: CD | None
    encounter_location: str | None
    non_xml_body: tuple[str | None, str | None, str | None] | None  # mediaType, representation, text
    structured: bool

    @property
    def is_french(self) -> bool:
        return self.realm == "FR" or CISIS_TEMPLATE in self.template_ids

    @property
    def unique_id(self) -> str | None:
        return str(self.id) if self.id else None


#: one step of the header's paths: ``v3:name`` or ``v3:name[@attribute='value']``
_STEP = re.compile(r"(?:(\w+):)?([\w-]+)(?:\[@(\w+)='([^']*)'\])?\Z")
_PATHS: dict[str, tuple[tuple[str, str | None, str | None], ...]] = {}


def _steps(path: str) -> tuple[tuple[str, str | None, str | None], ...]:
    """``path`` as (Clark tag, attribute, value) per step, compiled once."""
    steps = _PATHS.get(path)
    if steps is None:
        out = []
        for segment in path.split("/"):
            m = _STEP.match(segment)
            if m is None:
                raise ValueError(f"unsupported header path {path!r}")
            prefix, local, attribute, value = m.groups()
            out.append((f"{{{NS[prefix]}}}{local}" if prefix else local, attribute, value))
        steps = _PATHS[path] = tuple(out)
    return steps


def _all(el: etree._Element, path: str) -> list[etree._Element]:
    """The elements at ``path`` (child steps only) below ``el``, in document order: what
    ``el.findall(path, NS)`` returns, by lxml's C-level ``iterchildren`` (ElementPath
    costs several microseconds per call, and the header takes about seventy)."""
    nodes = [el]
    for tag, attribute, value in _steps(path):
        nodes = [c for n in nodes for c in n.iterchildren(tag)
                 if attribute is None or c.get(attribute) == value]
        if not nodes:
            break
    return nodes


def _first(el: etree._Element, path: str) -> etree._Element | None:
    """The first element at ``path`` below ``el`` (``el.find(path, NS)``), or None."""
    steps = _steps(path)
    if len(steps) == 1:
        tag, attribute, value = steps[0]
        for c in el.iterchildren(tag):
            if attribute is None or c.get(attribute) == value:
                return c
        return None
    found = _all(el, path)
    return found[0] if found else None


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    value = " ".join("".join(el.itertext()).split())
    return value or None


def _ii(el: etree._Element | None) -> II | None:
    if el is None or not el.get("root"):
        return None
    return II(el.get("root").strip(), (el.get("extension") or "").strip() or None)


def _cd(el: etree._Element | None) -> CD | None:
    if el is None or not el.get("code"):
        return None
    return CD(el.get("code").strip(), el.get("codeSystem"), el.get("displayName"))


def _name(name: etree._Element | None) -> tuple[str | None, str | None, str | None]:
    """(family, given, prefix); the birth name (qualifier BR) is preferred."""
    if name is None:
        return None, None, None
    fam = _first(name, "v3:family[@qualifier='BR']")
    fam = fam if fam is not None else _first(name, "v3:family")
    giv = _first(name, "v3:given[@qualifier='BR']")
    giv = giv if giv is not None else _first(name, "v3:given")
    pre = _first(name, "v3:prefix")
    if fam is None and giv is None and len(name) == 0:
        return _text(name), None, None
    return _text(fam), _text(giv), _text(pre)


def _person(el: etree._Element | None, entity: str = "v3:assignedAuthor") -> Person | None:
    if el is None:
        return None
    ent = _first(el, entity)
    if ent is None:
        return None
    p = Person(ids=[i for i in map(_ii, _all(ent, "v3:id")) if i])
    p.family, p.given, p.prefix = _name(_first(ent, "v3:assignedPerson/v3:name"))
    p.code = _cd(_first(ent, "v3:code"))
    p.function = _cd(_first(el, "v3:functionCode"))
    org = _first(ent, "v3:representedOrganization")
    if org is not None:
        p.organization_ids = [i for i in map(_ii, _all(org, "v3:id")) if i]
        p.organization_name = _text(_first(org, "v3:name"))
        p.practice_setting = _cd(_first(org, "v3:standardIndustryClassCode"))
    time = _first(el, "v3:time")
    p.time = time.get("value") if time is not None else None
    device = _first(ent, "v3:assignedAuthoringDevice")
    if device is not None:
        p.device = _text(_first(device, "v3:softwareName")) or \
            _text(_first(device, "v3:manufacturerModelName"))
    return p


def parse_cda(data: bytes) -> etree._Element:
    """Parse untrusted CDA bytes (bounded size, no DTD/entities); the root must be
    ``ClinicalDocument`` in the HL7 v3 namespace."""
    if len(data) > MAX_CDA_BYTES:
        raise CdaError(f"document larger than {MAX_CDA_BYTES} bytes")
    try:
        root = parse_xml(data)
    except XmlRejected as exc:
        if not _over_size_limits(exc):
            raise CdaError(str(exc).replace("in SOAP messages", "in CDA documents")) from None
        root = _parse_large_text(data)
    if root.tag != CLINICAL_DOCUMENT:
        raise CdaError(f"root element is {root.tag}, not ClinicalDocument (urn:hl7-org:v3)")
    return root


def _over_size_limits(exc: XmlRejected) -> bool:
    """Whether the safe parser gave up on one of libxml2's size limits (a text node over
    10,000,000 characters: the base64 of a PDF over ~7.5 MB) rather than on bad XML."""
    cause = exc.__context__
    return isinstance(cause, etree.XMLSyntaxError) and \
        cause.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT


def _parse_large_text(data: bytes) -> etree._Element:
    """A CDA whose body holds a text node over libxml2's default limit (a large PDF in
    a nonXMLBody). The header is read first by :func:`cda.stream.read_header_only`,
    which refuses a DOCTYPE anywhere before the root (so no entity can be declared) and
    a header over 1 MiB; then the document, at most :data:`MAX_CDA_BYTES`, is parsed
    with ``huge_tree`` (no per-node size limit) and otherwise the safe settings."""
    from .stream import read_header_only
    read_header_only(data)
    try:
        root = etree.fromstring(data, _LARGE_TEXT_PARSER)
    except etree.XMLSyntaxError as exc:
        raise CdaError(f"malformed XML: {exc}") from None
    if has_doctype(root):
        raise CdaError("DTDs and entity declarations are not allowed in CDA documents")
    return root


_LARGE_TEXT_PARSER = etree.XMLParser(**{**SAFE_OPTIONS, "huge_tree": True})


def looks_like_cda(head: bytes) -> bool:
    """Cheap test on a document's first bytes (no parsing)."""
    return b"ClinicalDocument" in head and b"urn:hl7-org:v3" in head


def read_header(doc: bytes | etree._Element) -> CdaHeader:
    root = parse_cda(doc) if isinstance(doc, (bytes, bytearray)) else doc
    if root.tag != CLINICAL_DOCUMENT:
        raise CdaError("not a ClinicalDocument")
    role = _first(root, "v3:recordTarget/v3:patientRole")
    patient = Patient()
    if role is not None:
        patient.ids = [i for i in map(_ii, _all(role, "v3:id")) if i]
        pat = _first(role, "v3:patient")
        if pat is not None:
            patient.family, patient.given, _ = _name(_first(pat, "v3:name"))
            g = _first(pat, "v3:administrativeGenderCode")
            patient.gender = g.get("code") if g is not None else None
            b = _first(pat, "v3:birthTime")
            patient.birth_time = b.get("value") if b is not None else None
    authors = [p for p in (_person(a) for a in _all(root, "v3:author")) if p]
    cust = _first(root, "v3:custodian/v3:assignedCustodian/v3:representedCustodianOrganization")
    events = []
    for se in _all(root, "v3:documentationOf/v3:serviceEvent"):
        low = _first(se, "v3:effectiveTime/v3:low")
        high = _first(se, "v3:effectiveTime/v3:high")
        performers = [p for p in (_person(pf, "v3:assignedEntity")
                                  for pf in _all(se, "v3:performer")) if p]
        events.append((_cd(_first(se, "v3:code")), low.get("value") if low is not None else None,
                       high.get("value") if high is not None else None, performers))
    loc = _first(root, "v3:componentOf/v3:encompassingEncounter/v3:location/v3:healthCareFacility")
    nxb = _first(root, "v3:component/v3:nonXMLBody/v3:text")
    non_xml = None
    if nxb is not None:
        non_xml = (nxb.get("mediaType"), nxb.get("representation"), nxb.text)
    time = _first(root, "v3:effectiveTime")
    conf = _first(root, "v3:confidentialityCode")
    lang = _first(root, "v3:languageCode")
    version = _first(root, "v3:versionNumber")
    realm = _first(root, "v3:realmCode")
    return CdaHeader(
        root=root,
        id=_ii(_first(root, "v3:id")),
        code=_cd(_first(root, "v3:code")),
        title=_text(_first(root, "v3:title")),
        effective_time=time.get("value") if time is not None else None,
        confidentiality=_cd(conf),
        language=lang.get("code") if lang is not None else None,
        set_id=_ii(_first(root, "v3:setId")),
        version=version.get("value") if version is not None else None,
        template_ids=[t.get("root") for t in _all(root, "v3:templateId")
                      if t.get("root")],
        realm=realm.get("code") if realm is not None else None,
        patient=patient,
        authors=authors,
        custodian_ids=[i for i in map(_ii, _all(cust, "v3:id")) if i]
        if cust is not None else [],
        custodian_name=_text(_first(cust, "v3:name")) if cust is not None else None,
        legal_authenticator=_person(_first(root, "v3:legalAuthenticator"), "v3:assignedEntity"),
        service_events=events,
        facility_type=_cd(_first(loc, "v3:code")) if loc is not None else None,
        encounter_location=_text(_first(loc, "v3:location/v3:name")) if loc is not None else None,
        non_xml_body=non_xml,
        structured=_first(root, "v3:component/v3:structuredBody") is not None,
    )


def utc_now_dtm() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
