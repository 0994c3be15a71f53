"""CDA -> HTML (cda.render): key facts shown, accessible structure, hostile content inert."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest
from lxml import etree, html

from cda import generator
from cda.render import CONTENT_SECURITY_POLICY, CSS, CSS_HASH, render

ANS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda" / "ans-ci-sis"
NS = {"v": "urn:hl7-org:v3"}


def _page(data: bytes):
    return html.document_fromstring(render(data))


def _visible(doc) -> str:
    return " ".join(doc.text_content().split())


def _assert_inert(doc):
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        assert el.tag not in ("script", "iframe", "object", "embed", "form", "base", "link",
                              "meta") or (el.tag == "meta" and set(el.attrib) <= {"charset", "name",
                                                                                  "content"})
        for name, value in el.attrib.items():
            assert not name.lower().startswith("on"), (el.tag, name)
            assert name in ("lang", "class", "href", "src", "alt", "id", "tabindex", "scope",
                            "colspan", "rowspan", "download", "charset", "name", "content"), name
            if name in ("href", "src"):
                assert value.startswith(("#", "data:image/png", "data:image/jpeg",
                                         "data:image/gif", "data:application/pdf")), value
    assert len(doc.xpath("//style")) == 1 and doc.xpath("//style")[0].text == CSS


@pytest.mark.parametrize("name", sorted(p.name for p in ANS.glob("*.xml")))
def test_corpus_document_renders_its_key_facts(name):
    data = (ANS / name).read_bytes()
    root = etree.fromstring(data)
    doc = _page(data)
    text = _visible(doc)
    title = " ".join(root.find("v:title", NS).text.split())
    assert doc.xpath("//h1")[0].text_content() == title
    assert doc.xpath("//title")[0].text == title
    ins = root.xpath("v:recordTarget/v:patientRole/v:id[starts-with(@root,'1.2.250.1.213.1.4')]"
                     "/@extension", namespaces=NS)[0]
    assert ins in text
    family = root.xpath("v:recordTarget/v:patientRole/v:patient/v:name/v:family", namespaces=NS)[0]
    assert family.text.strip() in text
    for author_family in root.xpath("v:author/v:assignedAuthor/v:assignedPerson/v:name/v:family",
                                    namespaces=NS):
        assert author_family.text.strip() in text
    assert doc.get("lang") == "fr"
    assert doc.xpath("//main[@id='contenu']") and doc.xpath("//a[@href='#contenu']")
    for sec_title in root.xpath("v:component/v:structuredBody/v:component/v:section/v:title",
                                namespaces=NS):
        label = " ".join("".join(sec_title.itertext()).split())
        if label:
            assert label in [h.text_content() for h in doc.xpath("//h2")]
    _assert_inert(doc)


def test_lab_results_appear_in_tables_with_units_and_ranges():
    doc = _page((ANS / "BIO-CR-BIO_2024.01_TSH_1.xml").read_bytes())
    cells = [c.text_content() for c in doc.xpath("//table//td")]
    assert any("1.950" in c for c in cells) and any("9.30 - 17.00" in c for c in cells)
    assert all(th.get("scope") == "col" for th in doc.xpath("//th"))


def test_pdf_body_becomes_a_download_link_of_the_same_bytes():
    data = (ANS / "DOC_NON_STRUCTURE_CDA-R2-N1.xml").read_bytes()
    root = etree.fromstring(data)
    pdf = base64.b64decode("".join(root.find(".//v:nonXMLBody/v:text", NS).text.split()))
    [link] = _page(data).xpath("//a[@download]")
    assert base64.b64decode(link.get("href").split(",", 1)[1]) == pdf and pdf.startswith(b"%PDF")


def test_text_and_image_bodies():
    head = generator.discharge_letter(seed=1).split(b"<component><structuredBody>")[0]
    text = head + (b'<component><nonXMLBody><text mediaType="text/plain">Bonjour &lt;b&gt;'
                   b"</text></nonXMLBody></component></ClinicalDocument>")
    doc = _page(text)
    assert doc.xpath("//pre")[0].text == "Bonjour <b>"
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    img = head + (b'<component><nonXMLBody><text mediaType="image/png" representation="B64">'
                  + png + b"</text></nonXMLBody></component></ClinicalDocument>")
    [im] = _page(img).xpath("//img")
    assert im.get("src").startswith("data:image/png;base64,") and im.get("alt")


HOSTILE = generator.discharge_letter(seed=2).replace(
    b"<paragraph>Pneumopathie communautaire.</paragraph>",
    b'<paragraph styleCode="Bold" onclick="alert(1)">x</paragraph>'
    b'<linkHtml href="javascript:alert(1)">cliquez</linkHtml>'
    b'<linkHtml href="https://evil.example/track.gif">suivi</linkHtml>'
    b'<renderMultiMedia referencedObject="img1"/>'
    b'<content ID="x" style="background:url(https://evil.example/a.png)">'
    b"&lt;script&gt;alert(2)&lt;/script&gt;&lt;img src=x onerror=alert(3)&gt;</content>"
    b'<script xmlns="http://www.w3.org/1999/xhtml">alert(4)</script>'
    b'<table><tr><td colspan="2&quot; onmouseover=&quot;alert(5)">c</td></tr></table>',
).replace(b"<title>Lettre de liaison", b"<title>&lt;/title&gt;&lt;script&gt;alert(6)&lt;/script&gt;"
          b" Lettre de liaison")


def test_hostile_cda_renders_inert():
    page = render(HOSTILE)
    doc = html.document_fromstring(page)
    _assert_inert(doc)
    assert "<script" not in page.lower()
    assert "evil.example/a.png" not in page          # document styles are dropped
    assert "alert(4)" not in page                    # foreign-namespace elements are dropped
    text = _visible(doc)
    assert "<script>alert(2)</script>" in text        # shown as text, escaped
    assert "javascript:alert(1)" in text               # the URL is shown, never a link
    assert not doc.xpath("//td[@colspan]")


def test_hostile_non_xml_bodies_are_not_rendered_as_active_content():
    head = generator.discharge_letter(seed=1).split(b"<component><structuredBody>")[0]
    for media, payload in (("text/html", b"<script>alert(1)</script>"),
                           ("image/svg+xml", b'<svg onload="alert(1)"/>')):
        data = head + (f'<component><nonXMLBody><text mediaType="{media}" representation="B64">'
                       .encode() + base64.b64encode(payload)
                       + b"</text></nonXMLBody></component></ClinicalDocument>")
        page = render(data)
        assert "<script" not in page.lower() and "<svg" not in page.lower()
        _assert_inert(html.document_fromstring(page))


def test_csp_allows_only_our_stylesheet_and_data_images():
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert f"style-src 'sha256-{CSS_HASH}'" in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # falls back to default-src 'none'
