"""ITI-44 Patient Identity Feed HL7 V3 (ITI TF-2b §3.44): add, revise, merge.

* PRPA_IN201301UV02 (add) and PRPA_IN201302UV02 (revise): ``patient/id`` are the
  patient's identifiers in the source's domain(s); ``patientPerson/asOtherIDs/id`` are
  other identifiers of the same person (e.g. the INS). Every ``patient/id`` must be in
  a domain this PIX Manager knows; an ``asOtherIDs/id`` of an unknown domain is not
  linked (not an error: ITI-44 lets sources send identifiers the manager does not
  manage, like a national id of another country). An INS of a known INS domain is
  checked (format and key) wherever it appears.
* PRPA_IN201304UV02 (merge): ``patient/id`` survives, ``replacementOf/priorRegistration/
  subject1/priorRegisteredRole/id`` is subsumed (merged into the surviving id of the
  same domain).

One ``subject`` per message (ITI TF-2b §3.44.4.1.2: the controlActProcess has exactly
one); identifiers are returned with their XPath, carried in the location of a
:class:`~pix.model.PixError` so the acknowledgementDetail names the element at fault.
"""
from __future__ import annotations

from lxml import etree

from ..manager import PixManager
from ..model import ErrorKind, Feed, Merge, PixError
from .message import NS, Header, Xp, first, ii, traits_from

__all__ = ["ADD", "REVISE", "MERGE", "feed_from", "merges_from"]

ADD, REVISE, MERGE = "PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02"


def _subject(root: etree._Element):
    m = etree.QName(root).localname
    subjects = root.xpath("v3:controlActProcess/v3:subject", namespaces=NS)
    if len(subjects) != 1:
        raise PixError(ErrorKind.REQUIRED_MISSING,
                       f"{m}: exactly one controlActProcess/subject is required "
                       f"(ITI TF-2b §3.44.4.1), found {len(subjects)}",
                       (f"/{m}/controlActProcess/subject", 0, 0, 0))
    patient = first(subjects[0], "v3:registrationEvent/v3:subject1/v3:patient")
    if patient is None:
        raise PixError(ErrorKind.REQUIRED_MISSING,
                       f"{m}: registrationEvent/subject1/patient is missing",
                       (Xp.PATIENT.format(m=m), 0, 0, 0))
    return subjects[0], patient


def _ids(mgr: PixManager, elements, xpath: str, *, optional_domain: bool = False):
    """(identifiers, locations) for II elements; unknown domains raise unless
    ``optional_domain`` (then the identifier is skipped)."""
    out, locs = [], []
    for n, el in enumerate(elements, start=1):
        if el.get("nullFlavor"):
            continue
        root, ext = ii(el)
        loc = (f"{xpath}[{n}]", 0, n, 0)
        if optional_domain and (not root or mgr.config.by_uid(root) is None):
            continue
        if not root:
            raise PixError(ErrorKind.REQUIRED_MISSING, "identifier without root (assigning "
                           "authority OID)", loc)
        if not ext:
            raise PixError(ErrorKind.REQUIRED_MISSING, f"identifier of domain {root} without "
                           "extension (the identifier itself)", loc)
        try:
            ident = mgr.identifier(ext, el.get("assigningAuthorityName"), root, "ISO", None, loc)
        except PixError as exc:
            exc.location = loc  # keep the XPath whatever the manager's (v2) field index
            raise
        out.append(ident)
        locs.append(loc)
    return out, locs


def feed_from(mgr: PixManager, root: etree._Element, header: Header) -> tuple[Feed, list]:
    m = etree.QName(root).localname
    _, patient = _subject(root)
    base = Xp.PATIENT.format(m=m)
    ids, locs = _ids(mgr, patient.xpath("v3:id", namespaces=NS), f"{base}/id")
    if not ids:
        raise PixError(ErrorKind.REQUIRED_MISSING, "patient/id is required (the patient's "
                       "identifier in the source's domain)", (f"{base}/id", 0, 0, 0))
    person = first(patient, "v3:patientPerson")
    others = person.xpath("v3:asOtherIDs/v3:id", namespaces=NS) if person is not None else []
    more, mlocs = _ids(mgr, others, f"{base}/patientPerson/asOtherIDs/id", optional_domain=True)
    return Feed(tuple(ids + more), traits_from(person), header.source,
                update=m == REVISE), locs + mlocs


def merges_from(mgr: PixManager, root: etree._Element,
                header: Header) -> list[tuple[Merge, tuple, tuple]]:
    m = etree.QName(root).localname
    subject, patient = _subject(root)
    base = Xp.PATIENT.format(m=m)
    survivors, slocs = _ids(mgr, patient.xpath("v3:id", namespaces=NS), f"{base}/id")
    prior = subject.xpath("v3:registrationEvent/v3:replacementOf/v3:priorRegistration/"
                          "v3:subject1/v3:priorRegisteredRole/v3:id", namespaces=NS)
    subsumed, mlocs = _ids(mgr, prior, Xp.PRIOR.format(m=m) + "/id")
    if not survivors:
        raise PixError(ErrorKind.REQUIRED_MISSING, "patient/id (surviving identifier) is "
                       "required", (f"{base}/id", 0, 0, 0))
    if not subsumed:
        raise PixError(ErrorKind.REQUIRED_MISSING, "replacementOf/priorRegistration/subject1/"
                       "priorRegisteredRole/id (identifier to merge) is required",
                       (Xp.PRIOR.format(m=m) + "/id", 0, 0, 0))
    traits = traits_from(first(patient, "v3:patientPerson"))
    from ..ins import INS_OIDS

    out = []
    for sub, mloc in zip(subsumed, mlocs):
        pick = next(((s, l) for s, l in zip(survivors, slocs) if s.domain == sub.domain), None)
        if pick is None and sub.domain in INS_OIDS:
            pick = next(((s, l) for s, l in zip(survivors, slocs) if s.domain in INS_OIDS), None)
        if pick is None:
            raise PixError(ErrorKind.CONFLICT, f"identifier to merge {sub.id} has no surviving "
                           f"patient/id of its domain {sub.domain}", mloc)
        out.append((Merge(pick[0], sub, traits, header.source), pick[1], mloc))
    return out
