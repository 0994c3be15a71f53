"""cda.stream: the ITI-41 intake reads a CDA's header only, as its bytes arrive, and the
summary facts of a structured body entry by entry; hostile XML is refused."""
from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from cda import generator
from cda.document import CdaError, read_header
from cda.metadata import derive
from cda.stream import CdaStream, read_header_only
from cda.summary import extract

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda"
ALL_CDA = sorted(CORPUS.rglob("*.xml"))
GENERATED = {"lab report": generator.lab_report(seed=3, results=40),
             "vaccination note": generator.vaccination_note(seed=3),
             "discharge letter": generator.discharge_letter(seed=3)}


def _stream(data: bytes, chunk: int = 65536, **kw):
    s = CdaStream(**kw)
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
    return s.result()


def _same_header(got, want) -> None:
    for f in dataclasses.fields(want):
        if f.name not in ("root", "non_xml_body"):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
    if want.non_xml_body is None:
        assert got.non_xml_body is None
    else:   # media type and representation; the content is not read
        assert got.non_xml_body == (*want.non_xml_body[:2], None)


@pytest.mark.parametrize("name,data", [(p.name, p.read_bytes()) for p in ALL_CDA]
                         + list(GENERATED.items()), ids=lambda x: x if isinstance(x, str) else "")
def test_streamed_header_and_facts_equal_the_whole_document_reading(name, data):
    want = read_header(data)
    for chunk in (7, 4096, 65536, len(data)):
        header, facts = _stream(data, chunk)
        _same_header(header, want)
        assert header.root.find("{urn:hl7-org:v3}component") is None   # header tree only
        assert facts == (extract(want) if want.structured else None)


def test_large_pdf_body_is_not_parsed():
    data = generator.unstructured_report(seed=1, pdf_bytes=12 * 10**6)
    header, facts = _stream(data)
    assert header.non_xml_body == ("application/pdf", "B64", None) and facts is None
    assert derive(data)[1].format_code.code == "urn:ihe:iti:xds-sd:pdf:2008"
    # the body comes after the parser stopped: even broken XML there is not looked at
    header, _ = _stream(data[:-200] + b"<<<")
    assert header.unique_id == read_header_only(data).unique_id


def _tsh() -> bytes:
    return (CORPUS / "ans-ci-sis" / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes()


@pytest.mark.parametrize("prolog", [
    b'<!DOCTYPE ClinicalDocument [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    b'<!DOCTYPE ClinicalDocument SYSTEM "http://example.org/cda.dtd">',
    b'<!DOCTYPE ClinicalDocument [<!ENTITY l0 "lol">'
    + b"".join(b'<!ENTITY l%d "%s">' % (n, b"&l%d;" % (n - 1) * 10) for n in range(1, 10)) + b"]>",
])
def test_doctype_and_entities_are_refused(prolog):
    data = _tsh()
    root = data.index(b"<ClinicalDocument")
    for chunk in (5, 65536):
        with pytest.raises(CdaError, match="DTDs and entity declarations are not allowed"):
            _stream(data[:root] + prolog + data[root:].replace(b"<title>", b"<title>&e;", 1),
                    chunk)


def test_a_doctype_cannot_hide_a_cda_behind_a_long_prolog():
    data = _tsh()
    root = data.index(b"<ClinicalDocument")
    hidden = b"<!DOCTYPE x>" + data[:root] + b"<!--" + b"x" * 500_000 + b"-->" + data[root:]
    with pytest.raises(CdaError, match="DTDs and entity declarations are not allowed"):
        _stream(hidden)


def test_hostile_sizes_and_malformed_headers_are_refused():
    data = _tsh()
    body, root = data.index(b"<component>"), data.index(b"<ClinicalDocument")
    with pytest.raises(CdaError, match="the header is larger than 1048576 bytes"):
        _stream(data[:body] + b'<title a="' + b"x" * (2 << 20) + b'"/>' + data[body:])
    with pytest.raises(CdaError, match="header is larger than 100000 bytes"):
        _stream(data[:body] + b"<!--" + b"x" * 200_000 + b"-->" + data[body:],
                header_limit=100_000)
    with pytest.raises(CdaError, match="no root element in the first 1048576 bytes"):
        _stream(data[:root] + b"<!--" + b"x" * (2 << 20) + b"-->" + data[root:])
    with pytest.raises(CdaError, match="malformed XML: Opening and ending tag mismatch"):
        _stream(data.replace(b"</title>", b"</titel>", 1))
    with pytest.raises(CdaError, match="malformed XML"):
        _stream(data[:body - 100])


def test_trouble_in_a_structured_body_costs_only_the_summary():
    data = _tsh()
    for broken in (data[:-1000], data.replace(b"</section>", b"</sectio>", 1)):
        header, facts = _stream(broken)
        assert header.unique_id == "1.2.250.1.213.1.1.1.55.2024.9.1" and facts is None
    header, facts = _stream(data, summary_limit=50_000)
    assert header.structured and facts is None
    assert len(_stream(data)[1]) == 2
    assert _stream(data, facts=False)[1] is None


def test_other_xml_is_let_through():
    assert _stream(b"<?xml version='1.0'?><!-- " + b"x" * 100_000 + b" --><report>"
                   b"ClinicalDocument</report>") == (None, None)
    assert _stream(b"<!DOCTYPE html><html><body>x</body></html>") == (None, None)
    assert _stream(b"not xml at all") == (None, None)
    with pytest.raises(CdaError, match="not a CDA document"):
        read_header_only(b"<report/>")


def test_a_level_1_text_body_keeps_its_media_type():
    text = base64.b64encode("Compte rendu".encode()).decode()
    data = generator.unstructured_report(seed=2).replace(
        b'mediaType="application/pdf"', b'mediaType="text/plain"')
    start = data.index(b'representation="B64">') + len(b'representation="B64">')
    data = data[:start] + text.encode() + data[data.index(b"</text>"):]
    assert _stream(data)[0].non_xml_body == ("text/plain", "B64", None)
