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
from .message import first, patient_registration, v3

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
    patient_registration(cap, identifiers, config.by_key, config.device_oid, notification=True)
    return serialize(root)


def ack_code(payload: etree._Element) -> str:
    """``acknowledgement/typeCode/@code`` of a consumer's MCCI_IN000002UV01."""
    tc = first(payload, "v3:acknowledgement/v3:typeCode")
    if tc is None or not tc.get("code"):
        raise OSError("answer without acknowledgement/typeCode")
    return tc.get("code").strip()



