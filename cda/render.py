"""CDA R2 -> accessible, inert HTML (WCAG 2.1 AA intent).

* The header's who/when/where first (patient, INS, authors, legal authenticator,
  custodian, dates, encounter place) as a definition list; then the body: sections as
  nested headings (h2..h6) with the narrative block mapped element by element
  (paragraph, list, table with caption/th scope, content, br, sub/sup); an unstructured
  body (nonXMLBody) as preformatted text, an inline image (PNG/JPEG/GIF only, from the
  document's own base64) or a PDF download link.
* Safe against hostile documents: the output is built from text nodes only, every string
  is escaped, no attribute of the document is copied except numeric colspan/rowspan,
  linkHtml becomes plain text (its URL shown, never followed), renderMultiMedia and
  external references become text, no script, no style from the document. The page has
  a fixed stylesheet whose hash is the only style the Content-Security-Policy allows;
  images only from ``data:``; nothing else loads.
* High contrast (black on white, 7:1+), visible focus, skip link, ``lang`` from the
  document, landmarks (header/main), table headers with scope.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from html import escape

from lxml import etree

from .document import V3, CdaHeader, Person, read_header, ts_human

CSS = """
html{background:#fff;color:#000;font:1rem/1.5 system-ui,sans-serif}
body{max-width:60rem;margin:0 auto;padding:1rem}
a{color:#00007a;text-decoration:underline}
a:focus,summary:focus,[tabindex]:focus{outline:3px solid #000;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#ff0;padding:.5rem}
h1{font-size:1.6rem;border-bottom:3px solid #000}
h2,h3,h4,h5,h6{margin-top:1.5rem}
dl.who{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dl.who dt{font-weight:bold}
table{border-collapse:collapse;margin:.5rem 0;max-width:100%}
th,td{border:1px solid #000;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#e6e6e6}
caption{font-weight:bold;text-align:left}
pre{white-space:pre-wrap;border:1px solid #000;padding:.5rem}
.note{border-left:4px solid #000;padding-left:.5rem}
img{max-width:100%;height:auto}
"""
CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
#: the only Content-Security-Policy a rendered document is served with.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{CSS_HASH}'; img-src data:; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
]
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif"}
_SPAN = re.compile(r"^[1-9][0-9]{0,2}$")


def _e(value) -> str:
    return escape(str(value), quote=True) if value is not None else ""


def _local(el) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _styles(el) -> tuple[str, str]:
    codes = (el.get("styleCode") or "").split()
    open_, close = "", ""
    if "Bold" in codes:
        open_, close = open_ + "<strong>", "</strong>" + close
    if "Italics" in codes:
        open_, close = open_ + "<em>", "</em>" + close
    return open_, close


def _inline(el) -> str:
    """Children and text of a narrative element, escaped."""
    out = [_e(el.text) if el.text else ""]
    for child in el:
        out.append(_narrative(child))
        if child.tail:
            out.append(_e(child.tail))
    return "".join(out)


def _cell_attrs(el) -> str:
    attrs = ""
    for name in ("colspan", "rowspan"):
        v = el.get(name)
        if v and _SPAN.match(v):
            attrs += f' {name}="{v}"'
    return attrs


def _narrative(el) -> str:
    if not isinstance(el.tag, str) or etree.QName(el).namespace not in (V3, None):
        return ""   # comments, PIs, foreign namespaces
    name = _local(el)
    o, c = _styles(el)
    if name == "paragraph":
        return f"<p>{o}{_inline(el)}{c}</p>"
    if name == "br":
        return "<br>"
    if name == "content":
        return f"<span>{o}{_inline(el)}{c}</span>"
    if name in ("sub", "sup"):
        return f"<{name}>{_inline(el)}</{name}>"
    if name == "list":
        tag = "ol" if el.get("listType") == "ordered" else "ul"
        items = "".join(_narrative(ch) for ch in el)
        return f"<{tag}>{items}</{tag}>"
    if name == "item":
        return f"<li>{o}{_inline(el)}{c}</li>"
    if name == "caption":
        return f"<p><strong>{_inline(el)}</strong></p>"
    if name == "table":
        parts = []
        for ch in el:
            if not isinstance(ch.tag, str):
                continue
            n = _local(ch)
            if n == "caption":
                parts.insert(0, f"<caption>{_inline(ch)}</caption>")
            elif n in ("thead", "tbody", "tfoot"):
                parts.append(f"<{n}>{''.join(_narrative(r) for r in ch)}</{n}>")
            elif n == "tr":
                parts.append(_narrative(ch))
        return f"<table>{''.join(parts)}</table>"
    if name in ("thead", "tbody", "tfoot"):
        return f"<{name}>{''.join(_narrative(r) for r in el)}</{name}>"
    if name == "tr":
        return f"<tr>{''.join(_narrative(cell) for cell in el)}</tr>"
    if name == "th":
        return f'<th scope="col"{_cell_attrs(el)}>{_inline(el)}</th>'
    if name == "td":
        return f"<td{_cell_attrs(el)}>{o}{_inline(el)}{c}</td>"
    if name == "linkHtml":
        href = el.get("href")
        label = _inline(el)
        return f"{label} (lien : {_e(href)})" if href else label
    if name == "renderMultiMedia":
        return "<span>[contenu multimédia non affiché]</span>"
    if name in ("footnote", "footnoteRef"):
        return f"<small>{_inline(el)}</small>"
    if name == "col" or name == "colgroup":
        return ""
    return _inline(el)


def _section(section, level: int) -> str:
    title = section.find(f"{{{V3}}}title")
    text = section.find(f"{{{V3}}}text")
    h = min(level, 6)
    out = ["<section>"]
    if title is not None and "".join(title.itertext()).strip():
        out.append(f"<h{h}>{_e(' '.join(''.join(title.itertext()).split()))}</h{h}>")
    if text is not None:
        out.append(f'<div class="narrative">{_inline(text)}</div>')
    for comp in section.findall(f"{{{V3}}}component/{{{V3}}}section"):
        out.append(_section(comp, level + 1))
    out.append("</section>")
    return "".join(out)


def _person(p: Person | None) -> str:
    if p is None:
        return ""
    bits = [_e(p.display_name)]
    if p.national_id:
        bits.append(f"(RPPS/ADELI {_e(p.national_id.extension)})")
    if p.code and p.code.display:
        bits.append(f"— {_e(p.code.display)}")
    if p.organization_name:
        bits.append(f"— {_e(p.organization_name)}")
    return " ".join(bits)


def _who(h: CdaHeader) -> str:
    pat = h.patient
    rows = []

    def row(label, value):
        if value:
            rows.append(f"<dt>{_e(label)}</dt><dd>{value}</dd>")

    name = " ".join(x for x in (pat.given, pat.family) if x)
    row("Patient", _e(name))
    if pat.ins:
        row("INS", _e(f"{pat.ins.extension} ({pat.ins.root})"))
    row("Né(e) le", _e(ts_human(pat.birth_time)))
    row("Sexe", _e({"F": "féminin", "M": "masculin"}.get(pat.gender or "", pat.gender)))
    row("Date du document", _e(ts_human(h.effective_time)))
    for a in h.authors:
        row("Auteur", _person(a) + (f" ({_e(ts_human(a.time))})" if a.time else ""))
    if h.legal_authenticator:
        row("Responsable (signataire)", _person(h.legal_authenticator))
    row("Organisation", _e(h.custodian_name))
    row("Lieu", _e(h.encounter_location))
    if h.confidentiality:
        row("Confidentialité", _e(h.confidentiality.display or h.confidentiality.code))
    for cd, low, high, _ in h.service_events:
        label = cd.display or cd.code if cd else "Acte"
        when = " – ".join(x for x in (ts_human(low), ts_human(high)) if x)
        row("Examen / acte", _e(label) + (f" ({_e(when)})" if when else ""))
    return f'<dl class="who">{"".join(rows)}</dl>'


def _non_xml(h: CdaHeader) -> str:
    media, representation, text = h.non_xml_body
    media = (media or "text/plain").split(";")[0].strip().lower()
    raw = text or ""
    if (representation or "").upper() == "B64":
        try:
            data = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            return '<p class="note">Contenu joint illisible (base64 invalide).</p>'
    else:
        data = raw.encode("utf-8")
    if media.startswith("text/"):
        return f"<pre>{_e(data.decode('utf-8', errors='replace'))}</pre>"
    if media in _IMAGE_TYPES:
        b64 = base64.b64encode(data).decode("ascii")
        return (f'<figure><img src="data:{media};base64,{b64}" '
                f'alt="{_e(h.title or "Image du document")}"></figure>')
    if media == "application/pdf":
        b64 = base64.b64encode(data).decode("ascii")
        return (f'<p>Ce document est un PDF ({len(data)} octets). '
                f'<a download="document.pdf" href="data:application/pdf;base64,{b64}">'
                f'Télécharger le PDF</a></p>')
    return f'<p class="note">Contenu joint de type {_e(media)} ({len(data)} octets), non affiché.</p>'


def render(doc: bytes | CdaHeader) -> str:
    """The HTML page of one CDA document."""
    h = doc if isinstance(doc, CdaHeader) else read_header(doc)
    lang = h.language.split("-")[0] if h.language and re.fullmatch(r"[A-Za-z-]{2,10}",
                                                                      h.language) else "fr"
    title = h.title or (h.code.display if h.code else None) or "Document"
    body = []
    if h.non_xml_body is not None:
        body.append(_non_xml(h))
    else:
        sb = h.root.find(f"{{{V3}}}component/{{{V3}}}structuredBody")
        if sb is not None:
            for sec in sb.findall(f"{{{V3}}}component/{{{V3}}}section"):
                body.append(_section(sec, 2))
    return ("<!DOCTYPE html>"
            f'<html lang="{_e(lang)}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            '<a class="skip" href="#contenu">Aller au contenu</a>'
            f'<header><h1>{_e(title)}</h1>{_who(h)}</header>'
            f'<main id="contenu" tabindex="-1">{"".join(body)}</main>'
            "</body></html>")
