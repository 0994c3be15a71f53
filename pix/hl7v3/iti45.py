"""ITI-45 PIX V3 Query: PRPA_IN201309UV02 in, PRPA_IN201310UV02 out (ITI TF-2b §3.45).

Same semantics as ITI-9 (:mod:`pix.hl7v2.iti9`), ITI TF-2b §3.45.4.2.3:

* case 1: identifiers found: AA, ``queryResponseCode`` OK, one ``subject`` whose
  ``patient/id`` lists them (``patientPerson/name`` nullFlavor NA: no name is sent);
* case 2: known identifier, none in the requested domains: AA, NF, no subject;
* case 3: ``patientIdentifier`` unknown (or merged away, or an ill-formed INS, which
  cannot be a known key): AE, AE, acknowledgementDetail 204 located at
  ``.../parameterList/patientIdentifier/value``;
* case 4: a domain not recognized — in ``dataSource/value`` or in the queried
  identifier's root: AE, AE, one acknowledgementDetail 204 per unknown domain, located
  at the ``dataSource[n]/value`` (or ``patientIdentifier/value``) at fault.
"""
from __future__ import annotations

from lxml import etree

from ..manager import PixManager
from ..model import ErrorKind, Identifier, PixError, Query
from .ack import Detail, acknowledgement, detail_from, wrapper
from .message import NS, Header, Xp, first, ii, patient_registration, v3

__all__ = ["QUERY", "RESPONSE", "parse_query", "response"]

QUERY, RESPONSE = "PRPA_IN201309UV02", "PRPA_IN201310UV02"


def _qbp(root):
    return first(root, "v3:controlActProcess/v3:queryByParameter")


def parse_query(mgr: PixManager, root: etree._Element) -> tuple[Query | None, list[Detail]]:
    base = Xp.QUERY.format(m=QUERY)
    qbp = _qbp(root)
    pid = first(qbp, "v3:parameterList/v3:patientIdentifier/v3:value")
    pid_loc = f"{base}/patientIdentifier/value"
    if pid is None:
        return None, [Detail("required", "queryByParameter/parameterList/patientIdentifier/"
                             "value is required", pid_loc)]
    proot, pext = ii(pid)
    if not proot or not pext:
        return None, [Detail("required", "patientIdentifier/value needs a root (domain) and "
                             "an extension (identifier)", pid_loc)]
    details: list[Detail] = []
    ident = None
    try:
        ident = mgr.identifier(pext, pid.get("assigningAuthorityName"), proot, "ISO", None,
                               (pid_loc, 0, 1, 0))
    except PixError as exc:
        kind = "unknown_key" if exc.kind is ErrorKind.INVALID_INS else None
        d = detail_from(exc, default=pid_loc)
        details.append(Detail(kind or d.code_key, d.message, pid_loc))
    domains = []
    sources = qbp.xpath("v3:parameterList/v3:dataSource", namespaces=NS)
    for n, ds in enumerate(sources, start=1):
        for value in ds.xpath("v3:value", namespaces=NS):
            root_, _ = ii(value)
            loc = f"{base}/dataSource[{n}]/value"
            if not root_:
                details.append(Detail("required", "dataSource/value without root", loc))
                continue
            try:
                domains.append(mgr.resolve_domain(value.get("assigningAuthorityName"), root_,
                                                  "ISO").key)
            except PixError as exc:
                details.append(Detail("unknown_key", exc.message, loc))
    if details:
        return None, details
    return Query(ident, tuple(dict.fromkeys(domains))), []


def response(mgr: PixManager, root: etree._Element, header: Header,
             found: list[Identifier] | None, details: list[Detail]) -> etree._Element:
    """PRPA_IN201310UV02: ``found`` None with ``details`` is AE; [] is NF."""
    cfg = mgr.config
    out = wrapper(RESPONSE, cfg, to_device=header.sender_device,
                  processing_code=header.processing_code)
    code = "AE" if details else "AA"
    if details and any(d.type_code == "AR" for d in details):
        code = "AR"
    acknowledgement(out, code, header.message_id, details)
    cap = etree.SubElement(out, v3("controlActProcess"), classCode="CACT", moodCode="EVN")
    etree.SubElement(cap, v3("code"), code="PRPA_TE201310UV02",
                     codeSystem="2.16.840.1.113883.1.18")
    if found:
        patient_registration(cap, found, mgr.domain, cfg.device_oid)
    qa = etree.SubElement(cap, v3("queryAck"))
    qbp = _qbp(root)
    qid = first(qbp, "v3:queryId")
    if qid is not None:
        qa.append(_copy(qid))
    etree.SubElement(qa, v3("queryResponseCode"),
                     code="AE" if details else ("OK" if found else "NF"))
    if qbp is not None:
        cap.append(_copy(qbp))
    return out


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))
