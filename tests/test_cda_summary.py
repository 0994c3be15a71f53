"""Patient summary facts extracted from structured CDA bodies (cda.summary)."""
from __future__ import annotations

from pathlib import Path

from cda import generator
from cda.document import read_header
from cda.summary import extract

ANS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda" / "ans-ci-sis"


def _facts(data: bytes, kind: str):
    return [f for f in extract(read_header(data)) if f.kind == kind]


def test_lab_results_with_units_reference_ranges_and_interpretation():
    tsh, ft4 = _facts((ANS / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes(), "lab_result")
    assert (tsh.code, tsh.value, tsh.unit, tsh.reference_range, tsh.interpretation) == \
        ("3016-3", "1.950", "m[IU]/L", "0.270-4.200 m[IU]/L", "N")
    assert (ft4.code, ft4.value, ft4.unit, ft4.reference_range, ft4.interpretation) == \
        ("3024-7", "7.67", "pg/mL", "9.30-17.00 pg/mL", "L")
    assert tsh.code_system == "2.16.840.1.113883.6.1" and tsh.effective_time.startswith("20140402")


def test_vaccination_note():
    [vac] = _facts((ANS / "VAC-NOTE_2023.01.xml").read_bytes(), "vaccination")
    assert vac.label.startswith("VACCIN TETANIQUE PASTEUR") and vac.code == "68747507"
    assert vac.effective_time == "20090928" and vac.detail == "4456672"   # lot number


def test_ips_allergy_vaccinations_and_current_treatment():
    data = (ANS / "IPS-FR_2024.01.xml").read_bytes()
    assert len(_facts(data, "vaccination")) == 2
    assert len(_facts(data, "allergy")) == 1
    assert len(_facts(data, "treatment")) == 1   # the other has ended or is an intention


def test_generated_documents():
    lab = generator.lab_report(seed=5, results=3, blood_group="O-")
    [blood] = _facts(lab, "blood_group")
    assert (blood.code, blood.value) == ("882-1", "O-")
    assert len(_facts(lab, "lab_result")) == 3
    letter = generator.discharge_letter(seed=5)
    [allergy] = _facts(letter, "allergy")
    assert allergy.label == "Pénicillines"
    [treatment] = _facts(letter, "treatment")
    assert treatment.label.startswith("AMOXICILLINE") and treatment.unit == "{comprimé}"
    [vac] = _facts(generator.vaccination_note(seed=5), "vaccination")
    assert vac.code == "34047010" and vac.detail.startswith("LOT")


def test_unstructured_document_has_no_facts():
    assert extract(read_header((ANS / "DOC_NON_STRUCTURE_CDA-R2-N1.xml").read_bytes())) == []
