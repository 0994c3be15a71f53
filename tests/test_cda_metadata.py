"""XDS metadata derived from the CDA header (cda.metadata), checked field by field against
what each corpus document says (read here with plain XPath, independently of cda.*)."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from cda import generator
from cda.metadata import Facility, MetadataError, derive, parse_code
from registry.affinity import dmp_value_sets

ANS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda" / "ans-ci-sis"
NS = {"v": "urn:hl7-org:v3"}
FACILITY = Facility(parse_code("AMBULATOIRE^Ambulatoire^1.2.250.1.213.1.1.4.9"),
                    parse_code("SA01^Etablissement public de santé^1.2.250.1.71.4.2.4"))

#: classCode (ASS_X16/X04) and formatCode (ASS_A11, or ASS_A12 for nonXMLBody) expected.
EXPECTED = {
    **{p.name: ("10", "urn:ihe:lab:xd-lab:2008") for p in ANS.glob("BIO-CR-BIO_*.xml")},
    "BIO-TROD_2024.01_COVID-19.xml": ("52", "urn:ans:ci-sis:trod:2024"),
    "CNAM-HR_2021.01_sans-info.xml": ("60", "urn:asip:ci-sis:hr:2019"),
    "DOC_NON_STRUCTURE_CDA-R2-N1.xml": ("10", "urn:ihe:iti:xds-sd:pdf:2008"),
    "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml": ("31", "urn:ihe:iti:xds-sd:pdf:2008"),
    "IPS-FR_2024.01.xml": ("11", "urn:ihe:pcc:ips:2020"),
    "IPS-FR_2024.01_DLU.xml": ("11", "urn:ihe:pcc:ips:2020"),
    "LDL-EES_2022.01.xml": ("11", "urn:asip:ci-sis:ldl-ees:2017"),
    "LDL-SES_2022.01.xml": ("10", "urn:asip:ci-sis:ldl-ses:2017"),
    "VAC-NOTE_2023.01.xml": ("52", "urn:asip:ci-sis:vac-note:2021"),
    "VSM_1.4_2022.01.xml": ("11", "urn:asip:ci-sis:vsm:2012"),
}


def utc(ts: str) -> str:
    """Independent TS -> UTC DTM (for values with a +HHMM/-HHMM zone)."""
    digits, zone = ts[:-5], ts[-5:]
    local = datetime.strptime(digits.ljust(14, "0"), "%Y%m%d%H%M%S")
    sign = 1 if zone[0] == "+" else -1
    out = local - sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))
    return out.strftime("%Y%m%d%H%M%S")[:len(digits)]


def x(root, path):
    found = root.xpath(path, namespaces=NS)
    return found[0] if found else None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_document_entry_field_by_field(name):
    data = (ANS / name).read_bytes()
    root = etree.fromstring(data)
    _, de = derive(data, FACILITY)
    ins = x(root, "v:recordTarget/v:patientRole/v:id[starts-with(@root,'1.2.250.1.213.1.4.')]")
    assert de.patient_id == f"{ins.get('extension')}^^^&{ins.get('root')}&ISO^NH"
    assert de.source_patient_id == de.patient_id
    assert f"PID-3|{ins.get('extension')}^^^&{ins.get('root')}&ISO^NH" in de.source_patient_info
    birth = x(root, "v:recordTarget/v:patientRole/v:patient/v:birthTime/@value")
    assert f"PID-7|{birth[:8]}" in de.source_patient_info
    gender = x(root, "v:recordTarget/v:patientRole/v:patient/v:administrativeGenderCode/@code")
    assert f"PID-8|{gender}" in de.source_patient_info
    doc_id = x(root, "v:id")
    assert de.unique_id == doc_id.get("root") + (f"^{doc_id.get('extension')}"
                                                 if doc_id.get("extension") else "")
    code = x(root, "v:code")
    assert (de.type_code.code, de.type_code.scheme) == (code.get("code"), code.get("codeSystem"))
    klass, fmt = EXPECTED[name]
    assert (de.class_code.code, de.class_code.scheme) == (klass, "1.2.250.1.213.1.1.4.1")
    assert de.format_code.code == fmt
    vs = dmp_value_sets()
    for attr, c in (("classCode", de.class_code), ("typeCode", de.type_code),
                    ("formatCode", de.format_code),
                    ("practiceSettingCode", de.practice_setting_code),
                    ("healthcareFacilityTypeCode", de.healthcare_facility_type_code)):
        assert vs.check(attr, c.code, c.scheme), (attr, c)
        assert c.display and c.display[0].value
    conf = x(root, "v:confidentialityCode")
    assert [(c.code, c.scheme) for c in de.confidentiality_codes] == \
        [(conf.get("code"), conf.get("codeSystem"))]
    assert de.creation_time == utc(x(root, "v:effectiveTime/@value"))
    assert de.language_code == x(root, "v:languageCode/@code")
    assert de.title[0].value == " ".join(x(root, "v:title").text.split())
    assert de.mime_type == "text/xml"
    lows = root.xpath("v:documentationOf/v:serviceEvent/v:effectiveTime/v:low/@value", namespaces=NS)
    highs = root.xpath("v:documentationOf/v:serviceEvent/v:effectiveTime/v:high/@value",
                       namespaces=NS)
    assert de.service_start_time == (min(map(utc, lows)) if lows else None)
    assert de.service_stop_time == (max(map(utc, highs)) if highs else None)
    events = root.xpath("v:documentationOf/v:serviceEvent/v:code", namespaces=NS)
    assert [(c.code, c.scheme) for c in de.event_codes] == \
        [(e.get("code"), e.get("codeSystem")) for e in events]
    author_ids = root.xpath("v:author/v:assignedAuthor/v:id/@extension", namespaces=NS)
    assert [a.person.split("^")[0] for a in de.authors] == author_ids
    for a, el in zip(de.authors, root.xpath("v:author/v:assignedAuthor", namespaces=NS)):
        spec = x(el, "v:code")
        if spec is not None:
            assert a.specialties == [f"{spec.get('code')}^{spec.get('displayName')}^"
                                     f"{spec.get('codeSystem')}"]
        org = x(el, "v:representedOrganization/v:id/@extension")
        if org:
            assert a.institutions[0].endswith(f"^IDNST^^^{org}")
    la = x(root, "v:legalAuthenticator/v:assignedEntity/v:id/@extension")
    assert de.legal_authenticator.split("^")[0] == la
    facility = x(root, "v:componentOf/v:encompassingEncounter/v:location/v:healthCareFacility/v:code")
    if facility is not None:
        assert de.healthcare_facility_type_code.code == facility.get("code")


def test_header_codes_win_over_configuration_and_configuration_fills_the_gaps():
    data = generator.discharge_letter(seed=4)
    _, de = derive(data, FACILITY)
    assert de.healthcare_facility_type_code.code == "SA01"
    assert de.practice_setting_code.code == "ETABLISSEMENT"
    bare = data.replace(b'<standardIndustryClassCode code="ETABLISSEMENT" displayName='
                        b'"Etablissement de sant\xc3\xa9" codeSystem="1.2.250.1.213.1.1.4.9"/>', b"")
    assert bare != data
    _, de = derive(bare, FACILITY)
    assert de.practice_setting_code.code == "AMBULATOIRE"
    with pytest.raises(MetadataError, match="OPENDMP_FACILITY_PRACTICE_SETTING"):
        derive(bare, Facility())


def test_document_without_ins_cannot_be_described():
    with pytest.raises(MetadataError, match="no INS"):
        derive((ANS.parent / "hl7-normative" / "SampleCDADocument.xml").read_bytes(), FACILITY)


def test_unknown_type_has_no_class():
    data = generator.lab_report(seed=1).replace(b'code="11502-2"', b'code="99999-9"', 1)
    with pytest.raises(MetadataError, match="99999-9.*ASS_X16"):
        derive(data, FACILITY)


def test_facility_from_env():
    f = Facility.from_env({"OPENDMP_FACILITY_TYPE": "SA07^Cabinet individuel^1.2.250.1.71.4.2.4"})
    assert f.healthcare_facility_type_code.code == "SA07" and f.practice_setting_code is None
    with pytest.raises(ValueError):
        Facility.from_env({"OPENDMP_FACILITY_TYPE": "SA07"})


def test_generated_documents_give_complete_entries():
    for make in generator.GENERATORS.values():
        _, de = derive(make(seed=9))
        assert de.class_code and de.format_code and de.patient_id.endswith("&ISO^NH")
