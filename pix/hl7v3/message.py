"""Reading HL7 v3 (NE2008) messages: the transmission wrapper and the patient.

The transmission wrapper (``id``, ``creationTime``, ``interactionId``,
``processingCode``, ``receiver``/``sender`` devices) is read into :class:`Header`;
:func:`ii` reads an II (``root`` + ``extension``); :func:`traits_from` reads the identity
traits of a ``patientPerson`` (name with ``use="L"`` first — the birth name — its
``given`` parts as first names, ``administrativeGenderCode``, ``birthTime``, and the
INSEE code of the birth place, ``birthPlace/addr/censusTract``).
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ..model import Traits

__all__ = ["V3", "v3", "Header", "header_of", "ii", "first", "traits_from", "Xp"]

V3 = "urn:hl7-org:v3"
NS = {"v3": V3}


def v3(local: str) -> str:
    return f"{{{V3}}}{local}"


def first(el: etree._Element | None, path: str) -> etree._Element | None:
    """The first element at ``path`` (``v3:`` prefixed XPath) under ``el``, or None."""
    if el is None:
        return None
    found = el.xpath(path, namespaces=NS)
    return found[0] if found else None


def ii(el: etree._Element | None) -> tuple[str, str]:
    """(root, extension) of an II element ('' for what is absent)."""
    if el is None:
        return "", ""
    return (el.get("root") or "").strip(), (el.get("extension") or "").strip()


@dataclass(frozen=True)
class Header:
    """What an answer needs from a request's transmission wrapper."""

    interaction: str
    message_id: tuple[str, str]
    processing_code: str
    processing_mode: str
    sender_device: tuple[str, str]
    receiver_device: tuple[str, str]

    @property
    def source(self) -> str:
        """The feeding system for the domain's allowed-sources check: the sender
        device id (root, or ``root^extension``)."""
        root, ext = self.sender_device
        return f"{root}^{ext}" if ext else root


def header_of(root: etree._Element) -> Header:
    def code(path: str) -> str:
        el = first(root, path)
        return (el.get("code") or "").strip() if el is not None else ""

    inter = first(root, "v3:interactionId")
    return Header(
        interaction=(inter.get("extension") or "").strip() if inter is not None
        else etree.QName(root).localname,
        message_id=ii(first(root, "v3:id")),
        processing_code=code("v3:processingCode"),
        processing_mode=code("v3:processingModeCode"),
        sender_device=ii(first(root, "v3:sender/v3:device/v3:id")),
        receiver_device=ii(first(root, "v3:receiver/v3:device/v3:id")),
    )


def _text(el: etree._Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def traits_from(person: etree._Element | None) -> Traits:
    if person is None:
        return Traits()
    names = person.xpath("v3:name[not(@nullFlavor)]", namespaces=NS)

    def uses(n) -> set[str]:
        return set((n.get("use") or "").split())

    birth = next((n for n in names if "L" in uses(n)), None)
    if birth is None and names:
        birth = names[0]
    used = next((n for n in names if uses(n) & {"C", "P", "A"} and n is not birth), None)

    def family(n) -> str | None:
        return _text(first(n, "v3:family")) or None if n is not None else None

    given = " ".join(_text(g) for g in birth.xpath("v3:given", namespaces=NS)) \
        if birth is not None else ""
    gender = first(person, "v3:administrativeGenderCode")
    sex = (gender.get("code") or "").strip().upper()[:1] if gender is not None else ""
    bt = first(person, "v3:birthTime")
    dob = "".join(c for c in (bt.get("value") or "") if c.isdigit())[:8] if bt is not None else ""
    place = _text(first(person, "v3:birthPlace/v3:addr/v3:censusTract")) or None
    return Traits(birth_name=family(birth), first_names=given.strip() or None,
                  used_name=family(used), sex=sex or None, birth_date=dob or None,
                  birth_place=place)


class Xp:
    """XPaths (from the interaction root) that acknowledgementDetail/location names."""

    PATIENT = "/{m}/controlActProcess/subject/registrationEvent/subject1/patient"
    PRIOR = ("/{m}/controlActProcess/subject/registrationEvent/replacementOf/"
             "priorRegistration/subject1/priorRegisteredRole")
    QUERY = "/{m}/controlActProcess/queryByParameter/parameterList"


def patient_registration(parent: etree._Element, identifiers, domain_of, device_oid: str,
                         *, notification: bool = False) -> None:
    """``subject/registrationEvent`` naming a patient by all its identifiers, as the PIX
    Manager answers (ITI-45, PRPA_IN201310UV02) and notifies (ITI-46, PRPA_IN201302UV02).
    ``domain_of(key)`` gives an identifier domain's configuration (universal id, namespace)."""
    attrs = {"typeCode": "SUBJ"}
    if notification:
        attrs["contextConductionInd"] = "false"
    subj = etree.SubElement(parent, v3("subject"), **attrs)
    reg = etree.SubElement(subj, v3("registrationEvent"), classCode="REG", moodCode="EVN")
    if notification:
        etree.SubElement(reg, v3("id"), nullFlavor="NA")
    etree.SubElement(reg, v3("statusCode"), code="active")
    s1 = etree.SubElement(reg, v3("subject1"), typeCode="SBJ")
    pat = etree.SubElement(s1, v3("patient"), classCode="PAT")
    for i in identifiers:
        d = domain_of(i.domain)
        el = etree.SubElement(pat, v3("id"), root=d.universal_id if d and d.universal_id
                              else i.domain, extension=i.id)
        if d is not None and d.namespace:
            el.set("assigningAuthorityName", d.namespace)
    etree.SubElement(pat, v3("statusCode"), code="active")
    person = etree.SubElement(pat, v3("patientPerson"), classCode="PSN",
                              determinerCode="INSTANCE")
    etree.SubElement(person, v3("name"), nullFlavor="NA")
    cust = etree.SubElement(reg, v3("custodian"), typeCode="CST")
    ae = etree.SubElement(cust, v3("assignedEntity"), classCode="ASSIGNED")
    etree.SubElement(ae, v3("id"), root=device_oid)
