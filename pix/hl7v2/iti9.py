"""ITI-9 PIX Query: QBP^Q23 in, RSP^K23 out (HL7 v2.5; ITI TF-2a §3.9.4.2.2.6).

* case 1: identifiers found in the requested domains: MSA AA, QAK OK, one PID whose
  PID-3 lists them and PID-5 is ``~^^^^^^S`` (the name is not sent);
* case 2: the identifier is known but has none in the requested domains: AA, QAK NF,
  no PID;
* case 3: the identifier in QPD-3 is unknown (or was subsumed by a merge): AE, QAK AE,
  ``ERR||QPD^1^3^1^1|204``;
* case 4: a domain in QPD-3 (``QPD^1^3^1^4``) or QPD-4 (``QPD^1^4^<rep>``) is not
  recognized: AE, QAK AE, one ERR per unknown domain.
"""
from __future__ import annotations

from ..manager import PixManager
from ..model import ErrorKind, Identifier, PixError, Query
from .ack import Err, err_from, err_segment, header
from .message import Inbound, escape

__all__ = ["parse_query", "response", "format_cx"]


def format_cx(mgr: PixManager, ident: Identifier) -> str:
    d = mgr.domain(ident.domain)
    hd = d.hd if d is not None else ident.domain
    if d is not None and d.universal_id:
        hd = "&".join([escape(d.namespace or ""), d.universal_id, d.universal_id_type or "ISO"])
    tail = f"^{escape(ident.type_code)}" if ident.type_code else ""
    return f"{escape(ident.id)}^^^{hd}{tail}"


def parse_query(mgr: PixManager, m: Inbound) -> tuple[Query | None, list[Err]]:
    """The query, or the errors of cases 3/4 (all unknown domains are reported)."""
    if not m.has("QPD"):
        return None, [Err("segment", "QPD segment missing", ("QPD", 0, 0, 0))]
    raw = m.field("QPD", 3)
    reps = m.reps(raw)
    if not reps or not m.cx(reps[0]).id:
        return None, [Err("required", "QPD-3 (person identifier) is missing",
                          ("QPD", 3, 1, 1))]
    errors: list[Err] = []
    cx = m.cx(reps[0])
    ident = None
    try:
        ident = mgr.identifier(cx.id, cx.namespace, cx.universal_id, cx.universal_id_type,
                               cx.type_code, ("QPD", 3, 1, 0))
    except PixError as exc:
        if exc.kind is ErrorKind.INVALID_INS:
            # a malformed INS cannot be a known key: case 3
            errors.append(Err("unknown_key", str(exc), ("QPD", 3, 1, 1)))
        else:
            errors.append(err_from(exc))
    domains = []
    for n, rep in enumerate(m.reps(m.field("QPD", 4)), start=1):
        d = m.cx(rep)
        if not (d.namespace or d.universal_id):
            continue
        try:
            domains.append(mgr.resolve_domain(d.namespace, d.universal_id,
                                              d.universal_id_type, ("QPD", 4, n, 0)).key)
        except PixError as exc:
            errors.append(Err("unknown_key", str(exc), ("QPD", 4, n, 0)))
    if errors:
        return None, errors
    return Query(ident, tuple(dict.fromkeys(domains))), []


def response(mgr: PixManager, m: Inbound, found: list[Identifier] | None,
             errors: list[Err]) -> str:
    """RSP^K23 for ``m``: ``found`` None with ``errors`` is an AE; [] is NF."""
    cfg = mgr.config
    segs = [header(cfg.application, cfg.facility, m.msh(3), m.msh(4), "RSP^K23^RSP_K23",
                   m.msh(11), m.version or "2.5")]
    tag = m.field("QPD", 2)
    qpd = m.segment_text("QPD") or "QPD"
    if errors:
        segs.append(f"MSA|AE|{escape(m.control_id)}|{escape(errors[0].message[:80])}")
        segs.extend(err_segment(e, "2.5") for e in errors)
        segs.append(f"QAK|{tag}|AE")
        segs.append(qpd)
    elif not found:
        segs += [f"MSA|AA|{escape(m.control_id)}", f"QAK|{tag}|NF", qpd]
    else:
        segs += [f"MSA|AA|{escape(m.control_id)}", f"QAK|{tag}|OK", qpd,
                 "PID|1||" + "~".join(format_cx(mgr, i) for i in found) + "||~^^^^^^S"]
    return "\r".join(segs) + "\r"
