"""ITI-46 PIX Update Notification HL7 V3: PRPA_IN201302UV02 to a PIX Consumer
(ITI TF-2b §3.46.4.1): ``patient/id`` lists the patient's identifiers in the domains
the consumer asked for, ``patientPerson/name`` is nullFlavor NA (no demographics are
sent), the custodian is this PIX Manager. The consumer answers MCCI_IN000002UV01;
:func:`ack_code` reads its ``acknowledgement/typeCode``.
"""
from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from ..config import Consumer, PixConfig
from ..model import Identifier
from .ack import serialize, wrapper
from .message import first, v3

__all__ = ["ACTION", "ACK_ACTION", "notification", "ack_code"]

ACTION = "urn:hl7-org:v3:PRPA_IN201302UV02"
ACK_ACTION = "urn:hl7-org:v3:MCCI_IN000002UV01"


def notification(config: PixConfig, consumer: Consumer,
                 identifiers: Sequence[Identifier]) -> bytes:
    root = wrapper("PRPA_IN201302UV02", config, to_device=("", ""), accept_ack="AL",
                   to_url=consumer.url)
    cap = etree.SubElement(root, v3("controlActProcess"), classCode="CACT", moodCode="EVN")
    etree.SubElement(cap, v3("code"), code="PRPA_TE201302UV02",
                     codeSystem="2.16.840.1.113883.1.18")
    subj = etree.SubElement(cap, v3("subject"), typeCode="SUBJ", contextConductionInd="false")
    reg = etree.SubElement(subj, v3("registrationEvent"), classCode="REG", moodCode="EVN")
    etree.SubElement(reg, v3("id"), nullFlavor="NA")
    etree.SubElement(reg, v3("statusCode"), code="active")
    s1 = etree.SubElement(reg, v3("subject1"), typeCode="SBJ")
    pat = etree.SubElement(s1, v3("patient"), classCode="PAT")
    for i in identifiers:
        d = config.by_key(i.domain)
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
    etree.SubElement(ae, v3("id"), root=config.device_oid)
    return serialize(root)


def ack_code(payload: etree._Element) -> str:
    """``acknowledgement/typeCode/@code`` of a consumer's MCCI_IN000002UV01."""
    tc = first(payload, "v3:acknowledgement/v3:typeCode")
    if tc is None or not tc.get("code"):
        raise OSError("answer without acknowledgement/typeCode")
    return tc.get("code").strip()



