"""Affinity domain: vendored value sets (ANS NOS, NIST codes.xml), INS patient domain,
settings. ITI TF-3 §4.2.3 (coded attributes), Table 4.2.3.1.7-2 (CX)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from lxml import etree

from registry import affinity as A
from registry.affinity import (
    ATTRIBUTES,
    AffinityDomain,
    Concept,
    ConfigurationError,
    PatientIdDomain,
    ValueSet,
    ValueSetError,
    ValueSets,
)

ROOT = Path(__file__).resolve().parents[1]
VALUESETS = ROOT / "valuesets"
DMP = VALUESETS / "dmp"
CORPUS = ROOT.parent / "shared" / "corpus" / "messages"
NIST_TESTS = CORPUS / "nist-testkit" / "tests"
CDA_EXAMPLES = CORPUS / "cda" / "ans-ci-sis"

LOINC = "2.16.840.1.113883.6.1"
TRE_A03 = "1.2.250.1.213.1.1.4.1"
TRE_A05 = "1.2.250.1.213.1.1.4.12"
TRE_A06 = "1.2.250.1.213.1.1.4.2.282"
TRE_A07 = "1.2.250.1.213.1.1.4.13"
TRE_A11 = "1.3.6.1.4.1.19376.1.2.3"
HL7_CONFIDENTIALITY = "2.16.840.1.113883.5.25"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not available")


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --------------------------------------------------------------------------- vendoring

def _sources_rows() -> list[tuple[str, str, int]]:
    text = (VALUESETS / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{40})` \| (\d+) \|", text, re.M)
    return [(f, blob, int(size)) for f, blob, size in rows]


def test_sources_md_lists_every_vendored_file_with_its_blob_id_and_size():
    rows = _sources_rows()
    listed = {f for f, _, _ in rows}
    on_disk = {
        p.relative_to(VALUESETS).as_posix()
        for p in VALUESETS.rglob("*") if p.is_file() and p.name != "SOURCES.md"
    }
    assert listed == on_disk
    for name, blob, size in rows:
        path = VALUESETS / name
        assert path.stat().st_size == size, name
        assert _git_blob_id(path) == blob, f"{name} is not the byte-for-byte upstream copy"


def test_ans_fhir_files_keep_their_crlf_line_ends():
    # The NOS IG builds are CRLF; a git autocrlf/eol rewrite would change the blob ids.
    for path in DMP.glob("ValueSet-*.json"):
        assert b"\r\n" in path.read_bytes(), path.name


@needs_corpus
@pytest.mark.parametrize("name", sorted(p.name for p in DMP.iterdir()))
def test_vendored_dmp_file_is_identical_to_the_corpus_copy(name):
    assert (DMP / name).read_bytes() == (CORPUS / "ans-valuesets" / name).read_bytes()


# --------------------------------------------------------------------------- ValueSet / ValueSets

def test_valueset_membership_is_exact_on_code_and_scheme():
    vs = ValueSet.of("t", [Concept("10", TRE_A03, "Compte rendu"), Concept("10", TRE_A03, "dup")])
    assert len(vs) == 1
    assert vs.contains("10", TRE_A03)
    assert ("10", TRE_A03) in vs
    assert not vs.contains("10", LOINC)
    assert not vs.contains("10")
    assert not vs.contains("11", TRE_A03)
    assert vs.display("10", TRE_A03) == "Compte rendu"
    assert vs.display("11", TRE_A03) is None


def test_valuesets_attribute_without_value_set_accepts_any_code():
    sets = ValueSets({"classCode": ValueSet.of("c", [Concept("A", "1.2")])})
    assert sets.check("classCode", "A", "1.2")
    assert not sets.check("classCode", "B", "1.2")
    assert sets.check("typeCode", "anything", "9.9")
    assert sets.check("mimeType", "text/whatever")
    assert sets.constrained == ("classCode",)


def test_valuesets_refuses_unknown_attribute_names():
    with pytest.raises(ValueError):
        ValueSets({"authorRole": ValueSet.of("x", [])})
    with pytest.raises(ValueError):
        ValueSets().check("classcode", "A", "1.2")


def test_valuesets_attributes_are_exactly_the_xds_coded_attributes():
    assert set(ATTRIBUTES) == {
        "classCode", "typeCode", "formatCode", "confidentialityCode",
        "healthcareFacilityTypeCode", "practiceSettingCode", "eventCodeList",
        "contentTypeCode", "folderCodeList", "mimeType",
    }


# --------------------------------------------------------------------------- DMP value sets

@pytest.fixture(scope="module")
def dmp() -> ValueSets:
    return A.dmp_value_sets()


def test_dmp_value_sets_sizes_match_the_ans_files(dmp):
    assert {a: len(dmp[a]) for a in dmp.constrained} == {
        "classCode": 12,                    # J57
        "typeCode": 108,                    # J66
        "formatCode": 68,                   # J60 (61) + 7 J10-only codes
        "confidentialityCode": 6,           # J58
        "healthcareFacilityTypeCode": 69,   # J02
        "practiceSettingCode": 12,          # J04
    }
    for open_attribute in ("eventCodeList", "contentTypeCode", "folderCodeList", "mimeType"):
        assert dmp.get(open_attribute) is None


@pytest.mark.parametrize("attribute, code, scheme", [
    ("classCode", "10", TRE_A03),                                   # Compte rendu
    ("classCode", "31", TRE_A03),                                   # Imagerie médicale
    ("classCode", "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN"),    # XAdES signature entry
    ("typeCode", "11502-2", LOINC),                                 # CR d'examens biologiques
    ("typeCode", "SYNTH", TRE_A05),                                 # VSM
    ("typeCode", "IMG-KOS", TRE_A05),
    ("typeCode", "E1762", "ASTM"),                                  # signature "Full Document"
    ("confidentialityCode", "N", HL7_CONFIDENTIALITY),
    ("confidentialityCode", "V", HL7_CONFIDENTIALITY),
    ("confidentialityCode", "MASQUE_PS", TRE_A07),
    ("confidentialityCode", "INVISIBLE_REPRESENTANTS_LEGAUX", TRE_A07),
    ("formatCode", "urn:ihe:iti:xds-sd:pdf:2008", TRE_A11),
    ("formatCode", "http://www.w3.org/2000/09/xmldsig#", "URN"),    # J60 only
    ("formatCode", "urn:ans:ci-sis:trod:2024", TRE_A06),            # J10 only (2024)
    ("formatCode", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1"),  # KOS
    ("healthcareFacilityTypeCode", "SA01", "1.2.250.1.71.4.2.4"),
    ("healthcareFacilityTypeCode", "EXP_PATIENT", "1.2.250.1.213.1.1.4.6"),
    ("practiceSettingCode", "ETABLISSEMENT", "1.2.250.1.213.1.1.4.9"),
    ("eventCodeList", "any-event", "1.2.3"),
    ("mimeType", "application/pdf", None),
])
def test_dmp_value_sets_accept_real_dmp_codes(dmp, attribute, code, scheme):
    assert dmp.check(attribute, code, scheme)


@pytest.mark.parametrize("attribute, code, scheme", [
    ("classCode", "10", LOINC),                        # right code, wrong scheme
    ("classCode", "99", TRE_A03),                      # J06 (CI-SIS) only, not DMP
    ("classCode", "IMAGES", "1.3.6.1.4.1.19376.1.2.6.1"),  # NIST code
    ("typeCode", "11502-2", TRE_A05),
    ("typeCode", "11526-1", LOINC),                    # dropped from J66 (still in X16)
    ("confidentialityCode", "U", HL7_CONFIDENTIALITY),
    ("confidentialityCode", "N", TRE_A07),
    ("formatCode", "urn:ihe:rad:TEXT", TRE_A11),
    ("healthcareFacilityTypeCode", "SA01", "1.2.250.1.213.1.1.4.6"),
    ("practiceSettingCode", "Practice-D", "1.3.6.1.4.1.21367.2017.3"),
])
def test_dmp_value_sets_reject_codes_outside_the_ans_sets(dmp, attribute, code, scheme):
    assert not dmp.check(attribute, code, scheme)


def test_dmp_value_sets_are_loaded_once():
    assert A.dmp_value_sets() is A.dmp_value_sets()
    assert AffinityDomain.from_settings({}).value_sets is A.dmp_value_sets()


def test_dmp_availability_statuses_are_the_j52_urns():
    assert A.dmp_availability_statuses() == {
        "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved",
        "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated",
        "urn:asip:ci-sis:2010:StatusType:Archived",
        "urn:asip:ci-sis:2010:StatusType:Deleted",
    }


@needs_corpus
@pytest.mark.parametrize("cda", sorted(p.name for p in CDA_EXAMPLES.glob("*.xml")))
def test_dmp_typecode_accepts_the_code_of_every_ci_sis_cda_example(dmp, cda):
    code = etree.parse(str(CDA_EXAMPLES / cda)).getroot().find("{urn:hl7-org:v3}code")
    assert dmp.check("typeCode", code.get("code"), code.get("codeSystem"))


# --------------------------------------------------------------------------- FHIR loader

def _strip_designations(src: Path, dst: Path) -> None:
    data = json.loads(src.read_text(encoding="utf-8"))
    for inc in data["compose"]["include"]:
        for concept in inc["concept"]:
            concept.pop("designation", None)
    dst.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("name", [
    "ValueSet-JDV-J57-ClassCode-DMP.json",
    "ValueSet-JDV-J66-TypeCode-DMP.json",
    "ValueSet-JDV-J58-ConfidentialityCode-DMP.json",
    "ValueSet-JDV-J10-XdsFormatCode-CISIS.json",
])
def test_system_to_coding_scheme_table_agrees_with_the_ans_designations(tmp_path, name):
    # J06/J52/J60 have no per-concept OIDs and rely on the table: it must give
    # exactly what the files that do carry designations say.
    stripped = tmp_path / name
    _strip_designations(DMP / name, stripped)
    with_designations = set(A.load_fhir_valueset(DMP / name))
    from_table = set(A.load_fhir_valueset(stripped))
    assert from_table == with_designations


def test_fhir_loader_gives_j60_and_j06_schemes_from_the_table():
    j60 = A.load_fhir_valueset(DMP / "ValueSet-JDV-J60-FormatCode-DMP.json")
    assert j60.contains("urn:ihe:iti:xds-sd:pdf:2008", TRE_A11)
    assert j60.contains("urn:ans:ci-sis:bio-ep-bio:2022", TRE_A06)
    j06 = A.load_fhir_valueset(DMP / "ValueSet-JDV-J06-XdsClassCode-CISIS.json")
    assert len(j06) == 13 and j06.contains("99", TRE_A03)


def test_fhir_loader_maps_urn_oid_systems_and_refuses_unknown_systems(tmp_path):
    def vs(include):
        p = tmp_path / "vs.json"
        p.write_text(json.dumps({"resourceType": "ValueSet", "name": "t",
                                 "compose": {"include": [include]}}))
        return p

    loaded = A.load_fhir_valueset(vs({"system": "urn:oid:1.2.3", "concept": [{"code": "a"}]}))
    assert loaded.contains("a", "1.2.3")
    with pytest.raises(ValueSetError, match="no XDS codingScheme"):
        A.load_fhir_valueset(vs({"system": "http://example.org/cs", "concept": [{"code": "a"}]}))
    with pytest.raises(ValueSetError, match="does not enumerate"):
        A.load_fhir_valueset(vs({"system": "http://loinc.org", "filter": [{"op": "is-a"}]}))


def test_fhir_loader_refuses_other_resources():
    with pytest.raises(ValueSetError, match="not a FHIR ValueSet"):
        A.load_fhir_valueset(DMP / "ConceptMap-ASS-X16-CorrespondanceType-Classe-DMP.json")


# --------------------------------------------------------------------------- SVS loader

def test_svs_loader_reads_j07_typecode_cisis():
    j07 = A.load_svs_valueset(DMP / "JDV_J07_XdsTypeCode_CISIS.xml")
    assert j07.name == "JDV_J07_XdsTypeCode_CISIS"
    assert len(j07) == 114
    assert j07.contains("11502-2", LOINC)
    assert j07.contains("E1762", "ASTM")
    assert j07.display("ATTEST-RESID", TRE_A05) == "Attestation de résidence"


def test_svs_loader_refuses_a_mapped_concept_list():
    with pytest.raises(ValueSetError, match="no ConceptList"):
        A.load_svs_valueset(DMP / "ASS_A11-CorresModeleCDA-XdsFormatCode-CISIS.xml")


def test_svs_loader_refuses_non_svs_xml():
    with pytest.raises(ValueSetError, match="not an IHE SVS"):
        A.load_svs_valueset(VALUESETS / "nist" / "codes.xml")


# --------------------------------------------------------------------------- NIST codes.xml

@pytest.fixture(scope="module")
def nist() -> ValueSets:
    return A.nist_value_sets()


def test_nist_codes_xml_constrains_every_xds_coded_attribute(nist):
    assert set(nist.constrained) == set(ATTRIBUTES)
    assert nist.check("mimeType", "text/xml")
    assert not nist.check("mimeType", "text/html")
    assert nist.check("confidentialityCode", "N", HL7_CONFIDENTIALITY)
    assert not nist.check("classCode", "10", TRE_A03)


def _coded_classifications(path: Path):
    """(classificationScheme, nodeRepresentation, codingScheme) of every coded
    Classification of an ebRIM 2.1 or 3.0 metadata file."""
    for cl in etree.parse(str(path)).iter("{*}Classification"):
        node = cl.get("nodeRepresentation")
        if not node:
            continue
        schemes = [v.text for s in cl.iter("{*}Slot") if s.get("name") == "codingScheme"
                   for v in s.iter("{*}Value")]
        yield cl.get("classificationScheme"), node, schemes[0] if schemes else None


@needs_corpus
@pytest.mark.parametrize("metadata", [
    "12346/single_doc.xml", "12346/two_doc_w_fol.xml", "12346/single_doc_w_fol.xml",
])
def test_nist_codes_accept_the_codes_of_nist_testkit_12346_metadata(nist, metadata):
    root = etree.parse(str(VALUESETS / "nist" / "codes.xml")).getroot()
    scheme_to_attribute = {ct.get("classScheme"): ct.get("name") for ct in root.iter("CodeType")}
    seen = set()
    for scheme_uuid, code, coding_scheme in _coded_classifications(NIST_TESTS / metadata):
        attribute = scheme_to_attribute[scheme_uuid]
        assert nist.check(attribute, code, coding_scheme), (attribute, code, coding_scheme)
        seen.add(attribute)
    assert {"classCode", "typeCode", "formatCode", "confidentialityCode",
            "healthcareFacilityTypeCode", "practiceSettingCode"} <= seen
    for eo in etree.parse(str(NIST_TESTS / metadata)).iter("{*}ExtrinsicObject"):
        assert nist.check("mimeType", eo.get("mimeType"))


@pytest.mark.parametrize("attribute, code, scheme", [
    ("classCode", "IMAGES", "1.3.6.1.4.1.19376.1.2.6.1"),
    ("typeCode", "11369-6", LOINC),
    ("formatCode", "urn:ihe:rad:TEXT", TRE_A11),
    ("healthcareFacilityTypeCode", "66280005", "2.16.840.1.113883.6.96"),
    ("practiceSettingCode", "Practice-D", "1.3.6.1.4.1.21367.2017.3"),
    ("eventCodeList", "urn:connectathon:bppc:foundational:policy", "1.3.6.1.4.1.21367.2017.3"),
    ("contentTypeCode", "225728007", "2.16.840.1.113883.6.96"),
    ("folderCodeList", "Referrals", "1.3.6.1.4.1.21367.2017.3"),
])
def test_nist_codes_accept_sampled_testkit_codes(nist, attribute, code, scheme):
    assert nist.check(attribute, code, scheme)


def test_nist_codes_reject_wrong_scheme_and_unknown_codes(nist):
    assert not nist.check("classCode", "IMAGES", LOINC)
    assert not nist.check("typeCode", "no-such-code", LOINC)
    assert not nist.check("folderCodeList", "Additional_Information", "1.3.6.1.4.1.21367.2017.3")


def test_nist_loader_refuses_a_file_without_xds_code_types(tmp_path):
    p = tmp_path / "codes.xml"
    p.write_text('<Codes><CodeType name="associationDocumentation"/></Codes>')
    with pytest.raises(ValueSetError):
        A.load_nist_codes_xml(p)


# --------------------------------------------------------------------------- patient domain

NIR = "279035121518989"


@pytest.mark.parametrize("cx", [
    f"{NIR}^^^&1.2.250.1.213.1.4.8&ISO",
    f"{NIR}^^^&1.2.250.1.213.1.4.8&ISO^NH",        # DMP wire form
    f"{NIR}^^^&1.2.250.1.213.1.4.9&ISO^NH",        # INS-NIA
])
def test_ins_domain_accepts_production_ins(cx):
    assert PatientIdDomain().accepts(cx)


@pytest.mark.parametrize("cx", [
    f"{NIR}^^^&1.2.250.1.213.1.4.10&ISO^NH",       # INS-NIR test: not by default
    f"{NIR}^^^&1.2.250.1.213.1.4.11&ISO^NH",       # INS-NIR demo: not by default
    f"{NIR}^^^&1.2.250.1.213.1.4.2&ISO",            # legacy INS-C
    f"{NIR}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^NH",  # HD.1 not allowed in XDS
    f"{NIR}^^^&1.2.250.1.213.1.4.8&L",
    f"{NIR}^^^&1.2.250.1.213.1.4.8",
    "^^^&1.2.250.1.213.1.4.8&ISO",
    NIR,
    "",
])
def test_ins_domain_rejects_other_domains_and_malformed_cx(cx):
    assert not PatientIdDomain().accepts(cx)


def test_ins_test_and_demo_domains_only_when_configured():
    domain = PatientIdDomain(frozenset({A.INS_NIR_TEST, A.INS_NIR_DEMO}))
    assert domain.accepts(f"{NIR}^^^&1.2.250.1.213.1.4.10&ISO^NH")
    assert domain.accepts(f"{NIR}^^^&1.2.250.1.213.1.4.11&ISO")
    assert not domain.accepts(f"{NIR}^^^&1.2.250.1.213.1.4.8&ISO")


def test_patient_domain_refuses_non_oids():
    with pytest.raises(ValueError):
        PatientIdDomain(frozenset({"INS-NIR"}))
    with pytest.raises(ValueError):
        PatientIdDomain(frozenset())


# --------------------------------------------------------------------------- settings

def test_from_settings_defaults_are_the_production_dmp_domain():
    domain = AffinityDomain.from_settings({})
    assert domain.patient_domain.assigning_authorities == {A.INS_NIR, A.INS_NIA}
    assert domain.value_sets is A.dmp_value_sets()
    assert domain.home_community_id is None
    assert domain.max_query_results == 5000


def test_from_settings_reads_every_setting():
    domain = AffinityDomain.from_settings({
        "OPENDMP_PATIENT_DOMAINS": " 1.2.250.1.213.1.4.10, 1.2.250.1.213.1.4.11 ,",
        "OPENDMP_VALUE_SETS": "NIST",
        "OPENDMP_HOME_COMMUNITY_ID": "urn:oid:1.2.250.1.999",
        "OPENDMP_MAX_QUERY_RESULTS": "250",
    })
    assert domain.patient_domain.assigning_authorities == {A.INS_NIR_TEST, A.INS_NIR_DEMO}
    assert domain.value_sets is A.nist_value_sets()
    assert domain.home_community_id == "urn:oid:1.2.250.1.999"
    assert domain.max_query_results == 250


def test_from_settings_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("OPENDMP_VALUE_SETS", "none")
    monkeypatch.setenv("OPENDMP_HOME_COMMUNITY_ID", "1.2.3.4")
    monkeypatch.delenv("OPENDMP_PATIENT_DOMAINS", raising=False)
    monkeypatch.delenv("OPENDMP_MAX_QUERY_RESULTS", raising=False)
    domain = AffinityDomain.from_settings()
    assert domain.value_sets == ValueSets()
    assert domain.value_sets.check("classCode", "whatever", "1.2")
    assert domain.home_community_id == "urn:oid:1.2.3.4"


def test_from_settings_loads_a_codes_xml_path_once(tmp_path):
    path = tmp_path / "codes.xml"
    shutil.copyfile(VALUESETS / "nist" / "codes.xml", path)
    first = AffinityDomain.from_settings({"OPENDMP_VALUE_SETS": str(path)})
    second = AffinityDomain.from_settings({"OPENDMP_VALUE_SETS": str(path)})
    assert first.value_sets is second.value_sets
    assert first.value_sets == A.nist_value_sets()


def test_from_settings_empty_values_count_as_unset():
    domain = AffinityDomain.from_settings({
        "OPENDMP_PATIENT_DOMAINS": " ", "OPENDMP_VALUE_SETS": "",
        "OPENDMP_HOME_COMMUNITY_ID": "", "OPENDMP_MAX_QUERY_RESULTS": "",
    })
    assert domain == AffinityDomain.from_settings({})


@pytest.mark.parametrize("settings, match", [
    ({"OPENDMP_PATIENT_DOMAINS": "1.2.250.1.213.1.4.8,INS"}, "OPENDMP_PATIENT_DOMAINS"),
    ({"OPENDMP_PATIENT_DOMAINS": ",,"}, "OPENDMP_PATIENT_DOMAINS"),
    ({"OPENDMP_VALUE_SETS": "/no/such/codes.xml"}, "OPENDMP_VALUE_SETS"),
    ({"OPENDMP_VALUE_SETS": "cisis"}, "OPENDMP_VALUE_SETS"),
    ({"OPENDMP_HOME_COMMUNITY_ID": "urn:uuid:1234"}, "OPENDMP_HOME_COMMUNITY_ID"),
    ({"OPENDMP_MAX_QUERY_RESULTS": "0"}, "OPENDMP_MAX_QUERY_RESULTS"),
    ({"OPENDMP_MAX_QUERY_RESULTS": "lots"}, "OPENDMP_MAX_QUERY_RESULTS"),
])
def test_from_settings_reports_the_bad_setting(settings, match):
    with pytest.raises(ConfigurationError, match=match):
        AffinityDomain.from_settings(settings)


def test_from_settings_refuses_a_codes_xml_that_is_not_one(tmp_path):
    path = tmp_path / "codes.xml"
    path.write_text("<not-codes/>")
    with pytest.raises(ConfigurationError, match="OPENDMP_VALUE_SETS"):
        AffinityDomain.from_settings({"OPENDMP_VALUE_SETS": str(path)})


def test_affinity_domain_checks_its_fields():
    with pytest.raises(ValueError):
        AffinityDomain(PatientIdDomain(), ValueSets(), home_community_id="1.2.3")
    with pytest.raises(ValueError):
        AffinityDomain(PatientIdDomain(), ValueSets(), max_query_results=0)
    domain = AffinityDomain(PatientIdDomain(), ValueSets())
    assert hash(domain) == hash(AffinityDomain(PatientIdDomain(), ValueSets()))
