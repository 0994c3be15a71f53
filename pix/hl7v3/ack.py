"""Answers: the transmission wrapper, MCCI_IN000002UV01 and acknowledgementDetail.

A refusal (:class:`pix.model.PixError`, or a message-level problem) becomes an
``acknowledgementDetail`` (typeCode ``E``) whose ``code`` is the HL7 table 0357 code
the HL7v2 binding uses for the same refusal (one table, :data:`pix.hl7v2.ack.CODES`,
codeSystem ``2.16.840.1.113883.12.357``), whose ``text`` is the readable message and
whose ``location`` is the XPath of the element at fault. ``acknowledgement/typeCode``
is AE for those (AR for message-level rejections: wrong interaction, processing code).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from ..config import PixConfig
from ..hl7v2.ack import CODES, err_from
from ..model import PixError
from .message import V3, Header, v3

__all__ = ["Detail", "detail_from", "wrapper", "acknowledgement", "mcci", "serialize",
           "TABLE_0357"]

TABLE_0357 = "2.16.840.1.113883.12.357"
INTERACTION_ROOT = "2.16.840.1.113883.1.6"


@dataclass(frozen=True)
class Detail:
    code_key: str  # a key of pix.hl7v2.ack.CODES
    message: str
    location: str | None = None

    @property
    def type_code(self) -> str:
        """acknowledgement/typeCode for this refusal (AE or AR, as MSA-1 in v2)."""
        return CODES[self.code_key][2]


def detail_from(exc: PixError, locations: Sequence[str] = (), default: str | None = None) -> Detail:
    """A :class:`Detail` for a refusal of :mod:`pix.manager`. The binding passes its
    XPaths as the first member of each location tuple (see :mod:`.iti44`)."""
    loc = exc.location[0] if exc.location and isinstance(exc.location[0], str) \
        and exc.location[0].startswith("/") else default
    return Detail(err_from(exc).code_key, exc.message, loc)


def _sub(parent, local: str, **attrs) -> etree._Element:
    el = etree.SubElement(parent, v3(local))
    for k, v in attrs.items():
        if v:
            el.set(k.rstrip("_"), v)
    return el


def _device(parent, role: str, type_code: str, device_id: tuple[str, str]) -> None:
    r = _sub(parent, role, typeCode=type_code)
    d = _sub(r, "device", classCode="DEV", determinerCode="INSTANCE")
    root, ext = device_id
    if root:
        _sub(d, "id", root=root, extension=ext)
    else:
        _sub(d, "id", nullFlavor="UNK")


def wrapper(interaction: str, config: PixConfig, *, to_device: tuple[str, str],
            processing_code: str = "P", accept_ack: str = "NE",
            to_url: str | None = None) -> etree._Element:
    """The transmission wrapper of a message we send (id, creationTime, interactionId,
    processing codes, receiver, sender), up to where the interaction's body goes."""
    root = etree.Element(v3(interaction), nsmap={None: V3})
    root.set("ITSVersion", "XML_1.0")
    _sub(root, "id", root=str(uuid.uuid4()))
    _sub(root, "creationTime", value=time.strftime("%Y%m%d%H%M%S", time.gmtime()))
    _sub(root, "interactionId", root=INTERACTION_ROOT, extension=interaction)
    _sub(root, "processingCode", code=processing_code if processing_code in ("P", "T", "D")
         else "P")
    _sub(root, "processingModeCode", code="T")
    _sub(root, "acceptAckCode", code=accept_ack)
    _device(root, "receiver", "RCV", to_device)
    if to_url:
        root[-1][0].append(etree.Element(v3("telecom"), value=to_url))
    _device(root, "sender", "SND", (config.device_oid, ""))
    return root


def acknowledgement(root: etree._Element, type_code: str, target: tuple[str, str],
                    details: Sequence[Detail] = ()) -> None:
    ack = _sub(root, "acknowledgement")
    _sub(ack, "typeCode", code=type_code)
    tm = _sub(ack, "targetMessage")
    if target[0]:
        _sub(tm, "id", root=target[0], extension=target[1])
    else:
        _sub(tm, "id", nullFlavor="UNK")
    for d in details:
        code, display, _ = CODES[d.code_key]
        ad = _sub(ack, "acknowledgementDetail", typeCode="E")
        _sub(ad, "code", code=code, codeSystem=TABLE_0357, codeSystemName="HL7 table 0357",
             displayName=display)
        _sub(ad, "text").text = d.message
        if d.location:
            _sub(ad, "location").text = d.location


def mcci(config: PixConfig, request: Header | None, type_code: str,
         details: Sequence[Detail] = ()) -> etree._Element:
    """MCCI_IN000002UV01, the ITI-44 acknowledgement (ITI TF-2b §3.44.4.2)."""
    root = wrapper("MCCI_IN000002UV01", config,
                   to_device=request.sender_device if request else ("", ""),
                   processing_code=request.processing_code if request else "P")
    acknowledgement(root, type_code, request.message_id if request else ("", ""), details)
    return root


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, encoding="UTF-8", xml_declaration=False)
