"""What the DMP shows at a glance, extracted from structured CDA bodies and kept per patient.

Extracted (IHE PCC / PaLM entry templates as the CI-SIS volets use them):

* vaccinations: ``substanceAdministration`` Immunization (1.3.6.1.4.1.19376.1.5.3.1.4.12),
  moodCode EVN, not negated: vaccine (code/name), date, lot;
* allergies: Allergy and intolerance observations (1.3.6.1.4.1.19376.1.5.3.1.4.6): allergen;
* blood group: observations coded LOINC 882-1 (ABO+Rh), 883-9 (ABO), 10331-7 (Rh);
* current treatments: Medication ``substanceAdministration`` (1.3.6.1.4.1.19376.1.5.3.1.4.7)
  not aborted whose period has no end or ends today or later;
* lab results: IHE PaLM Laboratory Observations (1.3.6.1.4.1.19376.1.3.1.6) with a value,
  with unit, reference range and interpretation.

Rows go to the ``cda_summary_item`` table (one per fact, keyed by the patient's INS and the
document's uniqueId, so re-submitting a document replaces its facts); :func:`patient_summary`
gives the JSON served at ``GET /patients/<INS>/summary``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from lxml import etree
from sqlalchemy import delete, insert, select

from opendmp.db import pg_execute, read_transaction, write_transaction
from opendmp.schema import cda_summary_item, patient

from .document import INS_OIDS, NS, V3, XSI, CdaHeader, utc_now_dtm

T_IMMUNIZATION = "1.3.6.1.4.1.19376.1.5.3.1.4.12"
T_ALLERGY = "1.3.6.1.4.1.19376.1.5.3.1.4.6"
T_MEDICATION = "1.3.6.1.4.1.19376.1.5.3.1.4.7"
T_LAB_OBSERVATION = "1.3.6.1.4.1.19376.1.3.1.6"
BLOOD_GROUP_CODES = {"882-1", "883-9", "10331-7"}
KINDS = ("vaccination", "allergy", "blood_group", "treatment", "lab_result")


@dataclass(slots=True)
class Fact:
    kind: str
    label: str | None = None
    code: str | None = None
    code_system: str | None = None
    value: str | None = None
    unit: str | None = None
    reference_range: str | None = None
    interpretation: str | None = None
    effective_time: str | None = None
    detail: str | None = None


def _templates(el: etree._Element) -> set[str]:
    return {t.get("root") for t in el.findall(f"{{{V3}}}templateId")}


def _one(el, path):
    return el.find(path, NS)      # ElementPath: compiled once per path, then cached


def _txt(el) -> str | None:
    if el is None:
        return None
    value = " ".join("".join(el.itertext()).split())
    return value or None


def _coded_label(code) -> str | None:
    if code is None:
        return None
    return code.get("displayName") or _txt(_one(code, "v3:originalText")) or code.get("code")


def _time(el) -> str | None:
    t = _one(el, "v3:effectiveTime")
    if t is None:
        return None
    if t.get("value"):
        return t.get("value")
    low = _one(t, "v3:low")
    return low.get("value") if low is not None else None


def _pq(el) -> tuple[str | None, str | None]:
    if el is None:
        return None, None
    return el.get("value"), el.get("unit")


def _value(obs) -> tuple[str | None, str | None]:
    v = _one(obs, "v3:value")
    if v is None:
        return None, None
    kind = (v.get(f"{{{XSI}}}type") or "").split(":")[-1]
    if kind in ("PQ", "INT", "REAL", "MO"):
        return _pq(v) if kind != "INT" else (v.get("value"), None)
    if kind in ("IVL_PQ",):
        lo, hi = _pq(_one(v, "v3:low")), _pq(_one(v, "v3:high"))
        return f"{lo[0] or ''}-{hi[0] or ''}", lo[1] or hi[1]
    if kind in ("CD", "CE", "CV", "CO"):
        return _coded_label(v), None
    return _txt(v) or v.get("value"), None


def _reference_range(obs) -> str | None:
    rng = _one(obs, "v3:referenceRange/v3:observationRange")
    if rng is None:
        return None
    v = _one(rng, "v3:value")
    if v is not None:
        lo, hi = _pq(_one(v, "v3:low")), _pq(_one(v, "v3:high"))
        if lo[0] or hi[0]:
            unit = lo[1] or hi[1]
            text = f"{lo[0] or ''}-{hi[0] or ''}"
            return f"{text} {unit}" if unit and unit != "1" else text
    return _txt(_one(rng, "v3:text"))


def extract(header: CdaHeader) -> list[Fact]:
    """The facts of one structured CDA body (nothing for nonXMLBody documents)."""
    body = _one(header.root, "v3:component/v3:structuredBody")
    if body is None:
        return []
    facts = BodyFacts()
    facts.add(body)
    return facts.facts()


class BodyFacts:
    """Facts collected from a structured body piece by piece (an ``entry`` at a time when
    the body is streamed, :mod:`cda.stream`), in the order :func:`extract` gives them:
    the substance administrations, then the observations, each in document order."""

    __slots__ = ("administrations", "observations")

    def __init__(self) -> None:
        self.administrations: list[Fact] = []
        self.observations: list[Fact] = []

    def add(self, el: etree._Element) -> None:
        """Collect the facts of every clinical statement in ``el`` (itself included)."""
        sa_facts, obs_facts = _statements(el)
        self.administrations += sa_facts
        self.observations += obs_facts

    def facts(self) -> list[Fact]:
        return [f for f in self.administrations + self.observations if f.label or f.value]


def _statements(body: etree._Element) -> tuple[list[Fact], list[Fact]]:
    facts: list[Fact] = []
    for sa in body.iter(f"{{{V3}}}substanceAdministration"):
        tids = _templates(sa)
        material = _one(sa, "v3:consumable/v3:manufacturedProduct/v3:manufacturedMaterial")
        mcode = _one(material, "v3:code") if material is not None else None
        label = _coded_label(mcode) if mcode is not None else None
        label = label or (_txt(_one(material, "v3:name")) if material is not None else None)
        if T_IMMUNIZATION in tids and sa.get("moodCode") == "EVN" \
                and sa.get("negationInd") != "true":
            facts.append(Fact("vaccination", label, mcode.get("code") if mcode is not None else
                              None, mcode.get("codeSystem") if mcode is not None else None,
                              effective_time=_time(sa),
                              detail=_txt(_one(material, "v3:lotNumberText"))
                              if material is not None else None))
        elif T_MEDICATION in tids:
            # IHE PCC entries are always statusCode "completed": a treatment is current
            # when it is not aborted and its period has no end, or ends today or later.
            status = _one(sa, "v3:statusCode")
            if status is not None and status.get("code") in ("aborted", "cancelled", "nullified"):
                continue
            high = _one(sa, "v3:effectiveTime/v3:high")
            if high is not None and (high.get("value") or "")[:8] < utc_now_dtm()[:8]:
                continue
            dose = _one(sa, "v3:doseQuantity")
            facts.append(Fact("treatment", label, mcode.get("code") if mcode is not None else
                              None, mcode.get("codeSystem") if mcode is not None else None,
                              value=dose.get("value") if dose is not None else None,
                              unit=dose.get("unit") if dose is not None else None,
                              effective_time=_time(sa)))
    administrations, facts = facts, []
    for obs in body.iter(f"{{{V3}}}observation"):
        tids = _templates(obs)
        code = _one(obs, "v3:code")
        c = code.get("code") if code is not None else None
        if T_ALLERGY in tids:
            agent = _one(obs, "v3:participant/v3:participantRole/v3:playingEntity/v3:code")
            value = _one(obs, "v3:value")
            label = _coded_label(agent) or _coded_label(value) or \
                _txt(_one(obs, "v3:participant/v3:participantRole/v3:playingEntity/v3:name"))
            facts.append(Fact("allergy", label,
                              agent.get("code") if agent is not None else None,
                              agent.get("codeSystem") if agent is not None else None,
                              value=_coded_label(value), effective_time=_time(obs)))
        elif c in BLOOD_GROUP_CODES:
            value, _ = _value(obs)
            facts.append(Fact("blood_group", _coded_label(code), c, code.get("codeSystem"),
                              value=value, effective_time=_time(obs)))
        elif T_LAB_OBSERVATION in tids and _one(obs, "v3:value") is not None \
                and code is not None:
            value, unit = _value(obs)
            interp = _one(obs, "v3:interpretationCode")
            facts.append(Fact("lab_result", _coded_label(code), c, code.get("codeSystem"),
                              value=value, unit=unit, reference_range=_reference_range(obs),
                              interpretation=interp.get("code") if interp is not None else None,
                              effective_time=_time(obs)))
    return administrations, facts


def _cut(value: str | None, n: int) -> str | None:
    return value[:n] if value else value


def store_summary(engine, header: CdaHeader, document_unique_id: str,
                  facts: list[Fact] | None = None, conn=None, replace: bool = True) -> int:
    """Replace the facts of one document (``facts`` when they were collected while the
    document streamed in, else read from ``header.root``); returns how many were filed.
    With ``conn``, in the caller's transaction (ITI-41 registration), else in a
    transaction of its own. ``replace=False`` only inserts: for a document the caller
    knows to have none yet (saves a statement)."""
    ins = header.patient.ins
    if ins is None or not ins.extension:
        return 0
    facts = extract(header) if facts is None else facts
    rows = [dict(zip(_ROW_COLUMNS, (
                ins.extension, ins.root, document_unique_id, f.kind, _cut(f.label, 512),
                _cut(f.code, 128), _cut(f.code_system, 128), _cut(f.value, 256),
                _cut(f.unit, 64), _cut(f.reference_range, 256), _cut(f.interpretation, 32),
                _cut(f.effective_time, 32), _cut(f.detail, 512))))
            for f in facts]
    if conn is None:
        with write_transaction(engine) as own:
            _replace_rows(own, document_unique_id, rows, replace)
    else:
        _replace_rows(conn, document_unique_id, rows, replace)
    return len(rows)


#: the columns every summary row fills (all text), in the order its values are listed
_ROW_COLUMNS = ("ins", "ins_root", "document_unique_id", "kind", "label", "code", "code_system",
                "value", "unit", "reference_range", "interpretation", "effective_time",
                "detail")
#: PostgreSQL: every row of a document in one statement, the rows as one JSON array read
#: against the table's row type (pg_execute; psycopg dumps one string far faster than 13
#: arrays)
_PG_INSERT_ROWS = (f"INSERT INTO cda_summary_item ({', '.join(_ROW_COLUMNS)}) SELECT "
                   f"{', '.join(_ROW_COLUMNS)} FROM "
                   "json_populate_recordset(NULL::cda_summary_item, %s::json)")


def _replace_rows(conn, document_unique_id: str, rows: list[dict], replace: bool) -> None:
    """Insert ``rows`` (:data:`_ROW_COLUMNS` -> value), after deleting the document's rows
    when ``replace``."""
    if replace:
        conn.execute(delete(cda_summary_item)
                     .where(cda_summary_item.c.document_unique_id == document_unique_id))
    if not rows:
        return
    if conn.dialect.name == "postgresql":   # in ITI-41's transaction: hot
        pg_execute(conn, _PG_INSERT_ROWS, (json.dumps(rows),))
    else:
        conn.execute(insert(cda_summary_item), rows)


def patient_summary(engine, ins: str) -> dict | None:
    """The JSON summary of one patient (``ins`` = the 15-character INS), or None when
    nothing is known."""
    t = cda_summary_item
    with read_transaction(engine) as conn:
        rows = conn.execute(select(t).where(t.c.ins == ins)
                            .order_by(t.c.effective_time, t.c.pk)).mappings().all()
    if not rows:
        return None
    out: dict = {"ins": ins, "vaccinations": [], "allergies": [], "blood_group": None,
                 "treatments": [], "lab_results": []}
    plural = {"vaccination": "vaccinations", "allergy": "allergies", "treatment": "treatments",
              "lab_result": "lab_results"}
    for r in rows:
        fact = {k: r[k] for k in ("label", "code", "code_system", "value", "unit",
                                  "reference_range", "interpretation", "effective_time",
                                  "detail", "document_unique_id") if r[k] is not None}
        if r["kind"] == "blood_group":
            out["blood_group"] = fact   # the latest (rows are in time order)
        else:
            out[plural[r["kind"]]].append(fact)
    return out


def patient_identifiers(engine, ins: str) -> list[str]:
    """The patient identifiers (CX ``<INS>^^^&<OID>&ISO``) this node knows for a
    15-character INS: those of its summary rows, and those of the registry's patients
    under an INS OID. The summary route is asked for an INS without its OID; its audit
    names the patient as the access history looks it up (:mod:`cda.web`)."""
    t = cda_summary_item
    candidates = [f"{ins}^^^&{oid}&ISO" for oid in INS_OIDS]
    with read_transaction(engine) as conn:
        roots = conn.execute(select(t.c.ins_root).where(t.c.ins == ins).distinct()).scalars()
        found = {f"{ins}^^^&{root}&ISO" for root in roots}
        found.update(conn.execute(select(patient.c.cx).where(patient.c.cx.in_(candidates)))
                     .scalars())
    return sorted(found)


__all__ = ["BodyFacts", "Fact", "extract", "patient_identifiers", "patient_summary",
           "store_summary"]
