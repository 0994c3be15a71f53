"""CDA validation (cda.validation): ANS schema, CI-SIS schematrons, our header rules, on the
corpus documents and on deliberately broken copies of them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cda import generator
from cda.document import ins_key_ok
from cda.validation import VOLETS, Schematron, schematron, validate

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda"
ANS = CORPUS / "ans-ci-sis"

#: file -> (schema, volet schematron, header-rule errors expected (substrings))
EXPECTED = {
    **{p.name: ("CDA_extended.xsd", "CR-BIO", []) for p in ANS.glob("BIO-CR-BIO_*.xml")},
    "BIO-TROD_2024.01_COVID-19.xml": ("CDA_extended.xsd", None,
                                      # the official example's time zone is "+100"
                                      ["legal authenticator has no valid time"]),
    "CNAM-HR_2021.01_sans-info.xml": ("CDA_extended.xsd", None, []),
    "DOC_NON_STRUCTURE_CDA-R2-N1.xml": ("CDA_extended.xsd", None, []),
    "IMG_CR_IMG_2024.01_CDA-R2-Niveau-1.xml": ("CDA_extended.xsd", None, []),
    "IPS-FR_2024.01.xml": ("CDA_extended.xsd", "IPS-FR", []),
    "IPS-FR_2024.01_DLU.xml": ("CDA_extended.xsd", "IPS-FR", []),
    "LDL-EES_2022.01.xml": ("CDA_extended.xsd", None, []),
    "LDL-SES_2022.01.xml": ("CDA_extended.xsd", "LDL-SES", []),
    "VAC-NOTE_2023.01.xml": ("CDA_extended.xsd", "VAC-NOTE", []),
    "VSM_1.4_2022.01.xml": ("CDA_extended.xsd", "VSM", []),
}
#: non-French HL7 samples: normative schema; they cannot be shared in the DMP (no INS).
FOREIGN = {
    "hl7-normative/SampleCDADocument.xml": 0,
    "hl7-c-cda-examples/CDA_reference_PDF/Unstructured_Document_reference.xml": 0,
    "hl7-c-cda-examples/CDA_with_Embedded_Text_plain/CDA_Embedded_Text_Plain_Surgical_Consult.xml": 0,
    "hl7-c-cda-examples/Diagnostic_Imaging_Report/Diagnostic_Imaging_Report.xml": 0,
    "hl7-c-cda-examples/Discharge_Summary/Discharge_Summary.xml": 0,
    "other/PaulWilson-Clinic.ccd.xml": 1,   # the corpus' schema-invalid one (element order)
}


def test_every_ans_corpus_document_is_covered():
    assert sorted(p.name for p in ANS.glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_official_ans_examples_pass_schema_and_their_volet_schematron(name):
    schema, volet, header_errors = EXPECTED[name]
    report = validate((ANS / name).read_bytes())
    assert report.schema == schema
    assert report.volet == volet
    assert report.errors("schema") == []
    assert report.errors("schematron") == [], report.errors("schematron")
    found = [f.message for f in report.errors("header")]
    assert len(found) == len(header_errors), found
    for want, got in zip(header_errors, found):
        assert want in got


@pytest.mark.parametrize("path", sorted(FOREIGN))
def test_hl7_samples_use_the_normative_schema_and_fail_the_dmp_header_rules(path):
    report = validate((CORPUS / path).read_bytes())
    assert report.schema == "CDA.xsd" and report.volet is None
    assert len(report.errors("schema")) == FOREIGN[path]
    assert any("the patient has no INS" in f.message for f in report.errors("header"))
    assert not report.valid


def _tsh() -> str:
    return (ANS / "BIO-CR-BIO_2024.01_TSH_1.xml").read_text(encoding="utf-8")


def test_wrong_document_code_is_reported_by_the_cr_bio_schematron():
    broken = _tsh().replace('code="11502-2"', 'code="11488-4"', 1)
    report = validate(broken.encode())
    msgs = [f.message for f in report.errors("schematron")]
    assert len(msgs) == 1 and "[Entete_CR-BIO]" in msgs[0] and "11502-2" in msgs[0]
    assert report.errors("schematron")[0].location == "/ClinicalDocument"


def test_code_outside_its_value_set_is_reported_with_the_value_set():
    broken = re.sub(r'(<interpretationCode code=")N(")', r"\1ZZZ\2", _tsh(), count=1)
    report = validate(broken.encode())
    msgs = [f.message for f in report.errors("schematron")]
    assert len(msgs) == 1 and "JDV_HL7_ObservationInterpretation_CISIS" in msgs[0]
    assert "ZZZ" in msgs[0]


def test_ldl_ses_modality_outside_value_set():
    text = (ANS / "LDL-SES_2022.01.xml").read_text(encoding="utf-8")
    assert "107724000" in text
    report = validate(text.replace('"107724000"', '"999999999"', 1).encode())
    assert any("JDV_ModaliteEntree" in f.message for f in report.errors("schematron"))


def test_removed_ins_passes_the_schematron_but_not_our_header_rules():
    broken = _tsh().replace('<id extension="279035121518989" root="1.2.250.1.213.1.4.10"/>', "")
    assert broken != _tsh()
    report = validate(broken.encode())
    assert report.errors("schematron") == [] and report.errors("schema") == []
    assert [f.message[:26] for f in report.errors("header")] == ["the patient has no INS: re"]


def test_ins_with_a_wrong_key_is_reported():
    report = validate(_tsh().replace("279035121518989", "279035121518988", 1).encode())
    [err] = report.errors("header")
    assert "wrong key 88" in err.message and "89" in err.message


def test_header_rules_name_what_is_missing():
    text = _tsh()
    text = re.sub(r"<legalAuthenticator>.*?</legalAuthenticator>", "", text, flags=re.S)
    text = re.sub(r"<custodian>.*?</custodian>", "", text, flags=re.S)
    text = text.replace('<languageCode code="fr-FR"/>', '<languageCode code="français"/>')
    text = text.replace('extension="801234534765"', 'extension="12"').replace(
        'root="1.2.250.1.71.4.2.1" extension="12"', 'root="1.2.3.4" extension="12"')
    report = validate(text.encode(), run_schematron=False)
    msgs = " | ".join(f.message for f in report.errors("header"))
    assert "legal authenticator (legalAuthenticator) is missing" in msgs
    assert "custodian organization" in msgs
    assert "languageCode 'français'" in msgs
    assert "RPPS/ADELI" in msgs


def test_doctype_and_external_entities_are_refused_before_any_validator():
    evil = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&e;</title></ClinicalDocument>')
    report = validate(evil.encode())
    assert [f.layer for f in report.findings] == ["parse"]
    assert "DTD" in report.findings[0].message


@pytest.mark.parametrize("as_bytes", [False, True])   # bytes go to Saxon through a memfd
def test_saxon_itself_refuses_doctype(as_bytes):
    from cda.validation import schematron
    exe = schematron("CI-SIS_VAC-NOTE_2023.01.sch")
    evil = ('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            '<ClinicalDocument xmlns="urn:hl7-org:v3">&e;</ClinicalDocument>')
    with pytest.raises(Exception, match="(?i)doctype"):
        exe.validate(evil.encode() if as_bytes else evil)


def test_a_latin_1_document_is_read_by_its_declared_encoding():
    data = (ANS / "BIO-CR-BIO_2024.01_TSH_1.xml").read_text(encoding="utf-8")
    latin1 = data.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"', 1).encode(
        "iso-8859-1", "xmlcharrefreplace")     # characters beyond Latin-1 as &#...;
    assert b'encoding="ISO-8859-1"' in latin1[:100]
    report = validate(latin1)
    assert report.volet == "CR-BIO" and report.valid, report.findings
    broken = latin1.replace(b'code="11502-2"', b'code="11488-4"', 1)
    assert [f.message for f in validate(broken).errors("schematron")] == \
        [f.message for f in validate(broken.decode("iso-8859-1").replace(
            'encoding="ISO-8859-1"', 'encoding="UTF-8"', 1).encode()).errors("schematron")]


#: documents each volet schematron is run on below: other volets' documents fail many of
#: its asserts, which is the point.
CROSS = ["BIO-CR-BIO_2024.01_TSH_1.xml", "BIO-CR-BIO_2024.01_Microbiologie_V1.xml",
         "VAC-NOTE_2023.01.xml", "LDL-SES_2022.01.xml", "VSM_1.4_2022.01.xml",
         "IPS-FR_2024.01.xml"]


@pytest.mark.parametrize("sch", sorted({v[1] for v in VOLETS.values()}))
def test_skeleton_parameters_change_speed_not_results(sch):
    """The schematrons compiled with SKELETON_PARAMETERS (xsl:key contexts, no fired-rule)
    fail exactly the asserts, at the same locations and in the same order, as compiled
    with the skeleton's defaults, on documents that fail many of them."""
    plain, fast = Schematron(sch, parameters={}), schematron(sch)
    docs = [(ANS / n).read_bytes() for n in CROSS] + [
        generator.lab_report(seed=5, results=6), generator.vaccination_note(seed=5),
        generator.discharge_letter(seed=5)]
    failed = 0
    for data in docs:
        want = plain.validate(data)
        assert fast.validate(data) == want
        failed += len(want)
    assert failed >= 5     # 7 (LDL-SES) to over a hundred


def test_a_cda_with_a_pdf_over_libxml2s_text_limit_is_validated_and_rendered():
    """The base64 of a 12 MB PDF is one text node over libxml2's 10,000,000-character
    limit: read with huge_tree after the header check, not refused as unreadable."""
    from cda.render import render
    data = generator.unstructured_report(seed=1, pdf_bytes=12 * 10**6)
    report = validate(data)
    assert report.valid and report.schema == "CDA_extended.xsd", report.findings
    assert "Télécharger le PDF" in render(data)
    # hostile XML stays refused on that path: a DOCTYPE past the first 4 KiB, a bad end
    root = data.index(b"<ClinicalDocument")
    evil = data[:root] + b"<!--" + b"x" * 5000 + b'--><!DOCTYPE ClinicalDocument [' \
        b'<!ENTITY e SYSTEM "file:///etc/passwd">]>' + data[root:]
    assert [str(f) for f in validate(evil).findings] == \
        ["error parse: DTDs and entity declarations are not allowed in CDA documents"]
    assert "malformed XML" in validate(data[:-30]).findings[0].message


def test_not_a_cda():
    report = validate(b"<doc/>")
    assert not report.valid and "not ClinicalDocument" in report.findings[0].message


def test_schematron_is_compiled_once_and_reused():
    from cda.validation import schematron
    assert schematron("CI-SIS_BIO-CR-BIO_2024.01.sch") is schematron("CI-SIS_BIO-CR-BIO_2024.01.sch")


def test_ins_key_ok():
    assert ins_key_ok("279035121518989")
    assert not ins_key_ok("279035121518988")
    assert ins_key_ok(generator.ins_with_key("1850520A12345".replace("A", "0")))
    assert ins_key_ok(generator.ins_with_key("18505" + "2A" + "123456"))
    assert not ins_key_ok("27903512151898")


@pytest.mark.parametrize("kind", sorted(generator.GENERATORS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_documents_pass_the_ans_schema_their_schematron_and_header_rules(kind, seed):
    report = validate(generator.GENERATORS[kind](seed=seed))
    assert report.schema == "CDA_extended.xsd"
    assert report.volet == {"cr-bio": "CR-BIO", "ldl-ses": "LDL-SES", "vac-note": "VAC-NOTE"}[kind]
    assert report.findings == []


def test_generated_lab_report_of_benchmark_size_is_valid():
    data = generator.lab_report(seed=7, results=120)   # what benchmarks/cda.py uses
    assert 135_000 < len(data) < 150_000
    assert validate(data).findings == []


def test_vendored_schematrons_are_unmodified():
    import hashlib
    root = Path(__file__).resolve().parents[1]
    table = (root / "schematrons" / "SOURCES.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{40})` \|$", table, re.M))
    on_disk = {str(p.relative_to(root)) for p in (root / "schematrons").rglob("*")
               if p.is_file() and p.name != "SOURCES.md"}
    assert on_disk == set(recorded)
    for path, blob in recorded.items():
        data = (root / path).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, path


def test_cli_cda_validate_reports_per_file(tmp_path):
    from harness import base_env, run_cli
    env = base_env(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    broken = tmp_path / "broken.xml"
    broken.write_text(_tsh().replace('code="11502-2"', 'code="11488-4"', 1), encoding="utf-8")
    good = ANS / "BIO-CR-BIO_2024.01_TSH_1.xml"
    result = run_cli(["cda", "validate", str(good), str(broken)], env)
    assert result.returncode == 1
    assert f"{good}: valid (schema CDA_extended.xsd, schematron CR-BIO)" in result.stdout
    assert f"{broken}: INVALID" in result.stdout
    assert "error schematron: [Entete_CR-BIO]" in result.stdout
    meta = run_cli(["cda", "metadata", "--facility-type",
                    "SA01^Etablissement public de santé^1.2.250.1.71.4.2.4", str(good)], env)
    assert meta.returncode == 0 and "urn:ihe:lab:xd-lab:2008" in meta.stdout
