"""CDA header -> a complete XDS DocumentEntry (ITI TF-3 §4.2.3.2; ANS CI-SIS "Volet
Partage de documents de santé" §mapping CDA/XDS).

One function, :func:`document_entry`. Codes come from the header; classCode from the
typeCode through the DMP's type-to-class table ASS_X16 (then the CI-SIS one, ASS_X04);
formatCode from the header templateIds through ASS_A11, or, for an unstructured body
(nonXMLBody), from its media type through ASS_A12. practiceSettingCode and
healthcareFacilityTypeCode come from the header when it has them, else from the
sending facility's configuration (:class:`Facility`).
"""
from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import dataclass
from typing import Mapping

from lxml import etree

from registry import vocabulary as V
from registry.affinity import VALUESETS_DIR, dmp_value_sets
from registry.model import Author, Code, DocumentEntry, LocalizedString

from .document import (
    CONFIDENTIALITY_SYSTEM,
    INS_OIDS,
    CdaError,
    CdaHeader,
    Person,
    ts_to_dtm,
)
from .stream import read_header_only

_DMP = VALUESETS_DIR / "dmp"
CLASS_SCHEME = "1.2.250.1.213.1.1.4.1"        # TRE_A03 ClasseDocument
LOINC = "2.16.840.1.113883.6.1"
_TRE_A05 = "1.2.250.1.213.1.1.4.12"
_FHIR_SYSTEM_TO_OID = {
    "http://loinc.org": LOINC,
    "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire":
        _TRE_A05,
    "https://mos.esante.gouv.fr/NOS/TRE_A12-NomenclatureASTM/FHIR/TRE-A12-NomenclatureASTM": "ASTM",
}
#: CI-SIS templates newer than ASS_A11 (2023-02-17); their formatCodes are in JDV_J10 (2024).
_A11_SUPPLEMENT = {
    "1.2.250.1.213.1.1.1.59": ("urn:ans:ci-sis:trod:2024", "1.2.250.1.213.1.1.4.2.282"),
}


class MetadataError(ValueError):
    """The header lacks something a DocumentEntry needs; the message names it."""


@dataclass(frozen=True)
class Facility:
    """What the sending facility's configuration supplies when the header does not."""

    practice_setting_code: Code | None = None
    healthcare_facility_type_code: Code | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Facility":
        """``OPENDMP_FACILITY_PRACTICE_SETTING`` and ``OPENDMP_FACILITY_TYPE``, each
        ``code^display^codingScheme`` (e.g. ``SA01^Etablissement public de santé^1.2.250.1.71.4.2.4``)."""
        env = os.environ if env is None else env
        return cls(parse_code(env.get("OPENDMP_FACILITY_PRACTICE_SETTING")),
                   parse_code(env.get("OPENDMP_FACILITY_TYPE")))


def parse_code(value: str | None) -> Code | None:
    if not value or not value.strip():
        return None
    parts = value.split("^")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"{value!r}: expected code^display^codingScheme")
    return Code(parts[0], parts[2], [LocalizedString(parts[1])] if parts[1] else [])


# ---------------------------------------------------------------------------- tables

def _concept_map(path) -> dict[tuple[str, str], str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for group in data["group"]:
        system = _FHIR_SYSTEM_TO_OID.get(group["source"], group["source"])
        for element in group["element"]:
            targets = element.get("target") or []
            if targets:
                out[(element["code"], system)] = targets[0]["code"]
    return out


@functools.cache
def type_to_class() -> tuple[dict, dict]:
    """(ASS_X16 DMP, ASS_X04 CI-SIS): (typeCode, scheme) -> classCode."""
    return (_concept_map(_DMP / "ConceptMap-ASS-X16-CorrespondanceType-Classe-DMP.json"),
            _concept_map(_DMP / "ConceptMap-ASS-X04-CorrespondanceType-Classe-CISIS.json"))


@functools.cache
def template_to_format() -> dict[str, list[tuple[str, str]]]:
    """ASS_A11: CDA templateId -> [(formatCode, codingScheme)]."""
    root = etree.parse(str(_DMP / "ASS_A11-CorresModeleCDA-XdsFormatCode-CISIS.xml"),
                       etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    ns = {"s": "urn:ihe:iti:svs:2008"}
    out: dict[str, list[tuple[str, str]]] = {}
    for mc in root.iterfind(".//s:MappedConcept", ns):
        source, target = mc.findall("s:Concept", ns)[:2]
        out.setdefault(source.get("code"), []).append((target.get("code"),
                                                       target.get("codeSystem")))
    return out


@functools.cache
def media_type_to_format() -> dict[str, str]:
    """ASS_A12: nonXMLBody media type -> formatCode (IHE TRE_A11 scheme)."""
    data = json.loads((_DMP / "ASS_A12-CorresMediaTypeCDANonStructure-XdsFormatCode-CISIS-FHIR.json")
                      .read_text(encoding="utf-8"))
    return {e["code"]: e["target"][0]["code"] for g in data["group"] for e in g["element"]}


IHE_FORMAT_SCHEME = "1.3.6.1.4.1.19376.1.2.3"


def _display(attribute: str, code: str, scheme: str | None, fallback: str | None = None):
    vs = dmp_value_sets().get(attribute)
    text = (vs.display(code, scheme) if vs is not None else None) or fallback
    return [LocalizedString(text)] if text else []


def class_code_for(type_code: Code) -> Code | None:
    dmp, cisis = type_to_class()
    key = (type_code.code, type_code.scheme)
    klass = dmp.get(key) or cisis.get(key)
    if klass is None:
        return None
    return Code(klass, CLASS_SCHEME, _display("classCode", klass, CLASS_SCHEME))


def format_code_for(header: CdaHeader) -> Code | None:
    if header.non_xml_body is not None:
        media = (header.non_xml_body[0] or "text/plain").split(";")[0].strip().lower()
        fmt = media_type_to_format().get(media)
        if fmt:
            return Code(fmt, IHE_FORMAT_SCHEME, _display("formatCode", fmt, IHE_FORMAT_SCHEME))
    table = template_to_format()
    candidates = []
    for tid in header.template_ids:
        for code, scheme in table.get(tid, []) or ([_A11_SUPPLEMENT[tid]]
                                                   if tid in _A11_SUPPLEMENT else []):
            candidates.append((tid, code, scheme))
    if not candidates:
        return None
    # the CI-SIS volet's own template (1.2.250.1.213...) wins over generic IHE ones
    candidates.sort(key=lambda c: not c[0].startswith("1.2.250.1.213."))
    _, code, scheme = candidates[0]
    return Code(code, scheme, _display("formatCode", code, scheme))


# ---------------------------------------------------------------------------- HL7 v2 forms

def _h(value: str | None) -> str:
    """A value inside an HL7 v2 component: delimiters removed."""
    if not value:
        return ""
    return " ".join(value.translate(str.maketrans("^&~|\\", "     ")).split())


def patient_cx(header: CdaHeader) -> str:
    ins = header.patient.ins
    if ins is None or not ins.extension:
        raise MetadataError("recordTarget/patientRole has no INS (id with root "
                            + " or ".join(INS_OIDS) + ")")
    return f"{_h(ins.extension)}^^^&{ins.root}&ISO^NH"


def xcn(p: Person) -> str | None:
    nat = p.national_id or next((i for i in p.ids if i.extension), None)
    if nat is None and not (p.family or p.given):
        return None
    ident = f"{_h(nat.extension)}" if nat else ""
    aa = f"&{nat.root}&ISO" if nat else ""
    return f"{ident}^{_h(p.family)}^{_h(p.given)}^^^{_h(p.prefix)}^^^{aa}".rstrip("^") \
        if aa else f"{ident}^{_h(p.family)}^{_h(p.given)}^^^{_h(p.prefix)}".rstrip("^")


def xon(p: Person) -> str | None:
    if not p.organization_name:
        return None
    org = next((i for i in p.organization_ids if i.extension), None)
    if org is None:
        return _h(p.organization_name)
    return f"{_h(p.organization_name)}^^^^^&{org.root}&ISO^IDNST^^^{_h(org.extension)}"


def _cne(cd) -> str | None:
    if cd is None or not cd.code or not cd.system:
        return None
    return f"{_h(cd.code)}^{_h(cd.display)}^{cd.system}"


def author(p: Person) -> Author:
    a = Author(person=xcn(p))
    if (inst := xon(p)) is not None:
        a.institutions.append(inst)
    if (role := _cne(p.function)) is not None:
        a.roles.append(role)
    if (spec := _cne(p.code)) is not None:
        a.specialties.append(spec)
    return a


def source_patient_info(header: CdaHeader) -> list[str]:
    pat = header.patient
    out = [f"PID-3|{_h(i.extension)}^^^&{i.root}&ISO" + ("^NH" if i.root in INS_OIDS else "^PI")
           for i in pat.ids if i.extension]
    if pat.family or pat.given:
        out.append(f"PID-5|{_h(pat.family)}^{_h(pat.given)}^^^^^L")
    if pat.birth_time:
        out.append(f"PID-7|{pat.birth_time[:8]}")
    if pat.gender:
        out.append(f"PID-8|{_h(pat.gender)}")
    return out


# ---------------------------------------------------------------------------- the function

def document_entry(cda: bytes | CdaHeader, facility: Facility | None = None,
                   entry_id: str | None = None) -> DocumentEntry:
    """The DocumentEntry a CDA document's header describes (hash and size are left to
    the repository, which computes them from the bytes)."""
    header = cda if isinstance(cda, CdaHeader) else read_header_only(cda)
    facility = facility or Facility()
    missing = []
    if header.id is None:
        missing.append("ClinicalDocument/id")
    if header.code is None or not header.code.system:
        missing.append("ClinicalDocument/code")
    if not header.effective_time or ts_to_dtm(header.effective_time) is None:
        missing.append("ClinicalDocument/effectiveTime")
    if header.confidentiality is None:
        missing.append("ClinicalDocument/confidentialityCode")
    if missing:
        raise MetadataError("the CDA header lacks " + ", ".join(missing))
    patient = patient_cx(header)
    type_code = Code(header.code.code, header.code.system,
                     _display("typeCode", header.code.code, header.code.system,
                              header.code.display))
    class_code = class_code_for(type_code)
    if class_code is None:
        raise MetadataError(f"typeCode {type_code.code} ({type_code.scheme}) has no classCode in "
                            "ASS_X16/ASS_X04")
    format_code = format_code_for(header)
    if format_code is None:
        raise MetadataError("no formatCode for templateIds " + ", ".join(header.template_ids)
                            + " (ASS_A11) nor for the body's media type (ASS_A12)")
    conf = header.confidentiality
    practice = next((p.practice_setting for *_, perfs in header.service_events for p in perfs
                     if p.practice_setting), None)
    if practice is None and header.legal_authenticator is not None:
        practice = header.legal_authenticator.practice_setting
    practice = practice or next((a.practice_setting for a in header.authors
                                 if a.practice_setting), None)
    practice_code = (Code(practice.code, practice.system,
                          _display("practiceSettingCode", practice.code, practice.system,
                                   practice.display))
                     if practice is not None and practice.system
                     else facility.practice_setting_code)
    ft = header.facility_type
    facility_code = (Code(ft.code, ft.system, _display("healthcareFacilityTypeCode", ft.code,
                                                        ft.system, ft.display))
                     if ft is not None and ft.system else facility.healthcare_facility_type_code)
    if practice_code is None:
        raise MetadataError("no practiceSettingCode in the header and none configured "
                            "(OPENDMP_FACILITY_PRACTICE_SETTING)")
    if facility_code is None:
        raise MetadataError("no healthcareFacilityTypeCode in the header (componentOf/"
                            "encompassingEncounter/location/healthCareFacility/code) and none "
                            "configured (OPENDMP_FACILITY_TYPE)")
    starts = [ts_to_dtm(low) for _, low, _, _ in header.service_events if low]
    stops = [ts_to_dtm(high) for _, _, high, _ in header.service_events if high]
    la = header.legal_authenticator
    de = DocumentEntry(
        id=entry_id or f"urn:uuid:{uuid.uuid4()}",
        object_type=V.STABLE_DOCUMENT,
        mime_type="text/xml",
        unique_id=header.unique_id,
        patient_id=patient,
        source_patient_id=patient,
        source_patient_info=source_patient_info(header),
        title=[LocalizedString(header.title, lang=header.language)] if header.title else [],
        class_code=class_code,
        type_code=type_code,
        format_code=format_code,
        confidentiality_codes=[Code(conf.code, conf.system or CONFIDENTIALITY_SYSTEM,
                                    _display("confidentialityCode", conf.code,
                                             conf.system or CONFIDENTIALITY_SYSTEM, conf.display))],
        healthcare_facility_type_code=facility_code,
        practice_setting_code=practice_code,
        event_codes=[Code(cd.code, cd.system, [LocalizedString(cd.display)] if cd.display else [])
                     for cd, *_ in header.service_events if cd is not None and cd.system],
        authors=[author(p) for p in header.authors],
        creation_time=ts_to_dtm(header.effective_time),
        service_start_time=min(starts) if starts else None,
        service_stop_time=max(stops) if stops else None,
        language_code=header.language,
        legal_authenticator=xcn(la) if la is not None else None,
    )
    return de


def derive(data: bytes, facility: Facility | None = None) -> tuple[CdaHeader, DocumentEntry]:
    """Parse the header once (not the body), derive once: (header, DocumentEntry)."""
    header = read_header_only(data)
    return header, document_entry(header, facility)


__all__ = ["CdaError", "Facility", "MetadataError", "derive", "document_entry", "parse_code"]
