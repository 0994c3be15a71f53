"""Acknowledgements: MSH of an answer, MSA, ERR (HL7 v2.3.1 and v2.5 forms).

One table maps every refusal (:class:`pix.model.ErrorKind`, plus the message-level
rejections) to the HL7 table 0357 code, its text and the MSA-1 code:

=========================  ====  ============================  ======
refusal                    0357  text                          MSA-1
=========================  ====  ============================  ======
segment missing/out of    100   Segment sequence error        AR
order, unreadable message
required field missing     101   Required field missing        AE
bad value, invalid INS     102   Data type error               AE
unknown domain/identifier  204   Unknown key identifier        AE
source not authorized      204   Unknown key identifier        AE
identity conflict,         205   Duplicate key identifier      AE
traits contradict the INS
unsupported message type   200   Unsupported message type      AR
unsupported event          201   Unsupported event code        AR
unsupported processing id  202   Unsupported processing id     AR
unsupported version        203   Unsupported version id        AR
internal error             207   Application internal error    AE
=========================  ====  ============================  ======

ERR in v2.5+ (ITI TF-2a §3.9.4.2.2.6): ``ERR||<seg>^<seq>^<field>^<rep>^<comp>|<code>^<text>^HL70357|E||||<message>``;
in v2.3.1 (ITI-8): ``ERR|<seg>^<seq>^<field>^<code>&<text>&HL70357`` (ELD).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from ..model import ErrorKind, PixError
from .message import Inbound, escape

__all__ = ["Err", "CODES", "err_from", "header", "ack", "now_ts", "next_control_id"]

CODES: dict[str, tuple[str, str, str]] = {
    "segment": ("100", "Segment sequence error", "AR"),
    "required": ("101", "Required field missing", "AE"),
    "datatype": ("102", "Data type error", "AE"),
    "unknown_key": ("204", "Unknown key identifier", "AE"),
    "duplicate_key": ("205", "Duplicate key identifier", "AE"),
    "msg_type": ("200", "Unsupported message type", "AR"),
    "event": ("201", "Unsupported event code", "AR"),
    "processing_id": ("202", "Unsupported processing id", "AR"),
    "version": ("203", "Unsupported version id", "AR"),
    "internal": ("207", "Application internal error", "AE"),
}

_KIND = {
    ErrorKind.REQUIRED_MISSING: "required",
    ErrorKind.BAD_VALUE: "datatype",
    ErrorKind.INVALID_INS: "datatype",
    ErrorKind.UNKNOWN_DOMAIN: "unknown_key",
    ErrorKind.UNKNOWN_IDENTIFIER: "unknown_key",
    ErrorKind.NOT_AUTHORIZED: "unknown_key",
    ErrorKind.CONFLICT: "duplicate_key",
    ErrorKind.TRAIT_CONTRADICTION: "duplicate_key",
}


@dataclass(frozen=True)
class Err:
    code_key: str
    message: str
    location: tuple[str, int, int, int] = ("", 0, 0, 0)

    @property
    def msa_code(self) -> str:
        return CODES[self.code_key][2]


def err_from(exc: PixError) -> Err:
    return Err(_KIND[exc.kind], str(exc), exc.location)


_counter = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def next_control_id() -> str:
    return f"ODMP{_PREFIX}.{int(time.time() * 1000):x}.{next(_counter)}"


def now_ts() -> str:
    return time.strftime("%Y%m%d%H%M%S")


def header(app: str, facility: str, to_app: str, to_facility: str, msg_type: str,
           processing_id: str, version: str) -> str:
    """An MSH segment (default encoding characters); ``to_*`` are raw ER7 (echoed)."""
    return (f"MSH|^~\\&|{escape(app)}|{escape(facility)}|{to_app}|{to_facility}|{now_ts()}||"
            f"{msg_type}|{next_control_id()}|{processing_id or 'P'}|{version}")


def _is_v25(version: str) -> bool:
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) >= (2, 5)
    except ValueError:
        return True


def err_segment(e: Err, version: str) -> str:
    code, text, _ = CODES[e.code_key]
    seg, fld, rep, comp = e.location
    msg = escape(e.message[:400])
    if _is_v25(version):
        loc = "^".join([seg, "1" if seg else "", str(fld or ""), str(rep or ""),
                        str(comp or "")]).rstrip("^") if seg else ""
        return f"ERR||{loc}|{code}^{text}^HL70357|E||||{msg}"
    loc = f"{seg}^1^{fld or ''}" if seg else "^^"
    return f"ERR|{loc}^{code}&{text}&HL70357|||||||{msg}"


def ack(inbound: Inbound | None, app: str, facility: str, code: str,
        errors: list[Err] = (), text: str | None = None) -> str:
    """A general acknowledgement (ACK) of ``inbound`` (None: an unreadable message)."""
    if inbound is not None:
        version = inbound.version or "2.5"
        event = inbound.message_type[1]
        proc = inbound.msh(11)
        to_app, to_fac = inbound.msh(3), inbound.msh(4)
        ctrl = escape(inbound.control_id)
    else:
        version, event, proc, to_app, to_fac, ctrl = "2.5", "", "P", "", "", ""
    if _is_v25(version):
        mtype = f"ACK^{event}^ACK" if event else "ACK"
    else:
        mtype = f"ACK^{event}" if event else "ACK"
    segs = [header(app, facility, to_app, to_fac, mtype, proc, version)]
    msa_text = escape((text or (errors[0].message if errors else ""))[:80])
    segs.append(f"MSA|{code}|{ctrl}" + (f"|{msa_text}" if msa_text else ""))
    segs.extend(err_segment(e, version) for e in errors)
    return "\r".join(segs) + "\r"
