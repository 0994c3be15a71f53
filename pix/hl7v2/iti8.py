"""ITI-8 Patient Identity Feed (HL7 v2.3.1; v2.5 PAM-style feeds accepted too).

ADT^A01/A04/A05 (admit/register/pre-admit: add), A08 (update), A28/A31 (add/update
person, PAM), A40 (merge: PID-3 survives, MRG-1 is subsumed). PID-3 repetitions are the
identifiers of one patient; the identity traits are read from PID-5 (type ``L``: birth
name; PAM-FR puts the list of birth first names in XPN.3), PID-7, PID-8 and the birth
place code (PID-11 with XAD-7 ``BDL``, XAD-9 the INSEE code; else PID-23).
"""
from __future__ import annotations

from ..manager import PixManager
from ..model import ErrorKind, Feed, Identifier, Merge, PixError, Traits
from .message import Inbound

__all__ = ["ADD_EVENTS", "UPDATE_EVENTS", "MERGE_EVENTS", "feed_from", "merges_from", "traits_from"]

ADD_EVENTS = frozenset({"A01", "A04", "A05", "A28"})
UPDATE_EVENTS = frozenset({"A08", "A31"})
MERGE_EVENTS = frozenset({"A40"})


def traits_from(m: Inbound, pid) -> Traits:
    names = [m.comps(r) for r in m.reps(m.field("PID", 5, seg=pid))]
    names = [n for n in names if any(x.strip() for x in n)]
    birth = next((n for n in names if len(n) > 6 and n[6] == "L"), None)
    used = next((n for n in names if len(n) > 6 and n[6] == "D"), None)
    first_rep = names[0] if names else None
    birth = birth or first_rep

    def family(n):
        return m.text(m.subs(n[0])[0]).strip() if n and n[0] else None

    first_names = None
    if birth:
        given = m.text(birth[1]).strip() if len(birth) > 1 else ""
        more = m.text(birth[2]).strip() if len(birth) > 2 else ""
        if more and given and more.split(" ")[0].upper() == given.upper():
            first_names = more  # PAM-FR: XPN.3 is the full list of birth first names
        else:
            first_names = " ".join(x for x in (given, more) if x) or None
    dob = "".join(ch for ch in m.comp(m.field("PID", 7, seg=pid), 1) if ch.isdigit())[:8]
    sex = m.comp(m.field("PID", 8, seg=pid), 1).strip().upper()[:1] or None
    place = None
    for addr in m.reps(m.field("PID", 11, seg=pid)):
        c = m.comps(addr)
        if len(c) > 8 and c[6] == "BDL" and c[8].strip():
            place = m.text(c[8]).strip()
    if not place:
        place = m.text(m.field("PID", 23, seg=pid)).strip() or None
    return Traits(birth_name=family(birth), first_names=first_names,
                  used_name=family(used) if used else None, sex=sex,
                  birth_date=dob or None, birth_place=place)


def _identifiers(mgr: PixManager, m: Inbound, raw: str, seg: str, fld: int):
    out, locs = [], []
    for n, rep in enumerate(m.reps(raw), start=1):
        if not rep.strip(m.enc[0] + m.enc[3] + " "):
            continue
        loc = (seg, fld, n, 0)
        cx = m.cx(rep)
        if cx.id == '""':
            continue  # HL7 explicit null: no identifier in that domain (nothing to link)
        out.append(mgr.identifier(cx.id, cx.namespace, cx.universal_id, cx.universal_id_type,
                                  cx.type_code, loc))
        locs.append(loc)
    return out, locs


def feed_from(mgr: PixManager, m: Inbound, event: str) -> tuple[Feed, list]:
    pid = m.segments("PID")
    if not pid:
        raise PixError(ErrorKind.REQUIRED_MISSING, "PID segment missing", ("PID", 0, 0, 0))
    pid = pid[0]
    idents, locs = _identifiers(mgr, m, m.field("PID", 3, seg=pid), "PID", 3)
    if not idents:
        raise PixError(ErrorKind.REQUIRED_MISSING, "PID-3 (patient identifier list) is empty",
                       ("PID", 3, 0, 0))
    return Feed(tuple(idents), traits_from(m, pid), m.source,
                update=event in UPDATE_EVENTS), locs


def merges_from(mgr: PixManager, m: Inbound) -> list[tuple[Merge, tuple, tuple]]:
    """(merge, survivor location, subsumed location) for each PID/MRG pair; each MRG-1
    repetition is merged into the PID-3 repetition of the same domain."""
    pids, mrgs = m.segments("PID"), m.segments("MRG")
    if not pids or not mrgs:
        raise PixError(ErrorKind.REQUIRED_MISSING,
                       "A40 needs a PID and an MRG segment", ("MRG" if pids else "PID", 0, 0, 0))
    out = []
    for pid, mrg in zip(pids, mrgs):
        survivors, slocs = _identifiers(mgr, m, m.field("PID", 3, seg=pid), "PID", 3)
        subsumed, mlocs = _identifiers(mgr, m, m.field("MRG", 1, seg=mrg), "MRG", 1)
        if not survivors:
            raise PixError(ErrorKind.REQUIRED_MISSING, "PID-3 is empty", ("PID", 3, 0, 0))
        if not subsumed:
            raise PixError(ErrorKind.REQUIRED_MISSING, "MRG-1 is empty", ("MRG", 1, 0, 0))
        traits = traits_from(m, pid)
        for sub, mloc in zip(subsumed, mlocs):
            pick = next(((s, l) for s, l in zip(survivors, slocs) if s.domain == sub.domain),
                        None)
            if pick is None:
                pick = next(((s, l) for s, l in zip(survivors, slocs)
                             if _both_ins(s, sub)), None)
            if pick is None:
                raise PixError(ErrorKind.CONFLICT,
                               f"MRG-1 identifier {sub.id} has no PID-3 identifier of its "
                               f"domain to be merged into", mloc[:3] + (4,))
            out.append((Merge(pick[0], sub, traits, m.source), pick[1], mloc))
    return out


def _both_ins(a: Identifier, b: Identifier) -> bool:
    from ..ins import INS_OIDS

    return a.domain in INS_OIDS and b.domain in INS_OIDS
