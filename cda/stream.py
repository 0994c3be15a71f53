"""A CDA document read as its bytes arrive, header first (the ITI-41 intake).

HL7 CDA R2 §4.2-4.3: everything in ``ClinicalDocument`` before its one ``component`` is
the header; the ``component`` holds the body, a ``structuredBody`` or a ``nonXMLBody``
(a PDF, image or text, base64 in one text node). The repository only needs the header
to cross-check a document against its metadata, so :class:`CdaStream`:

* finds the root element with a first small parser fed at most :data:`SLICE` bytes at a
  time (a document whose root is not ``ClinicalDocument`` costs only its prolog);
* parses the header incrementally (lxml ``XMLPullParser`` with the settings of
  :mod:`soapstack.xml`: no DTD, no entities, no network, libxml2's size limits kept)
  and stops at the body: only the header tree is built, whatever the document's size;
* for a ``nonXMLBody`` reads the start tag of its ``text`` (media type) and stops
  there: the content is never parsed, so a 40 MB PDF costs what its header costs;
* for a ``structuredBody``, when asked (the patient summary), keeps parsing up to
  ``summary_limit`` bytes, collecting the summary facts entry by entry
  (:class:`cda.summary.BodyFacts`) and clearing each entry and narrative block once
  read, so memory stays bounded by the largest entry.

Hostile input: a DOCTYPE (hence any entity declaration) is refused before libxml2 sees
it (a document with a DOCTYPE is taken for a CDA when its first ``header_limit`` bytes
name ``ClinicalDocument``; other XML with a DOCTYPE is let through unparsed), a header
(prolog included) larger than ``header_limit`` is refused, malformed XML in the header
is refused; trouble in a structured body only costs the summary (the document is still
cross-checked). The body is not checked for well-formedness: the repository stores
documents, :mod:`cda.validation` validates them.
"""
from __future__ import annotations

import dataclasses
import logging

from lxml import etree

from soapstack.xml import has_doctype, safe_pull_parser

from .document import CLINICAL_DOCUMENT, V3, CdaError, CdaHeader, looks_like_cda, read_header

log = logging.getLogger("opendmp.cda")

COMPONENT, STRUCTURED_BODY, NON_XML_BODY = f"{{{V3}}}component", f"{{{V3}}}structuredBody", \
    f"{{{V3}}}nonXMLBody"
TEXT, ENTRY, SECTION = f"{{{V3}}}text", f"{{{V3}}}entry", f"{{{V3}}}section"
#: at most this many bytes go to the root-finding parser at a time.
SLICE = 4096
#: at most this many bytes go to the main parser at a time.
PARSE_SLICE = 16 * 1024
HEADER_LIMIT = 1024 * 1024
SUMMARY_LIMIT = 16 * 1024 * 1024
_TAGS = (CLINICAL_DOCUMENT, COMPONENT, STRUCTURED_BODY, NON_XML_BODY, TEXT, ENTRY)

_NO_DTD = "DTDs and entity declarations are not allowed in CDA documents"

# states
_ROOT, _DTD, _HEADER, _BODY_KIND, _NON_XML, _BODY, _DONE = range(7)
#: a document that cannot be parsed is a CDA when its first bytes say so.
HEAD = 65536


class CdaStream:
    """Feed a document's chunks in order; then :meth:`result` gives its header (or None
    when the document is not a CDA) and, for a structured body read to its end, the
    summary facts. Errors in the header raise :class:`CdaError` from :meth:`result`."""

    __slots__ = ("header_limit", "summary_limit", "want_facts", "size", "is_cda", "_state",
                 "_finder", "_seen", "_parser", "_root", "_body", "_media", "_facts",
                 "_error", "_head", "_parsed")

    def __init__(self, header_limit: int = HEADER_LIMIT, summary_limit: int = SUMMARY_LIMIT,
                 facts: bool = True) -> None:
        self.header_limit, self.summary_limit, self.want_facts = header_limit, summary_limit, facts
        self.size, self.is_cda, self._state = 0, None, _ROOT
        self._finder = safe_pull_parser(("start",))
        self._seen: list[bytes] = []        # bytes given to the root finder
        self._parser = self._root = self._body = self._media = self._facts = None
        self._error: str | None = None
        self._head = b""
        self._parsed = 0

    # ------------------------------------------------------------------ feeding

    def feed(self, chunk: bytes) -> None:
        if self._state == _DONE or not chunk:
            return
        self.size += len(chunk)
        if self._state == _ROOT:
            self._find_root(chunk)
        elif self._state == _DTD:
            self._keep_head(chunk, self.header_limit)
        else:
            self._parse(chunk)

    def _find_root(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), SLICE):
            piece = chunk[start:start + SLICE]
            if b"<!DOCTYPE" in (self._seen[-1][-8:] if self._seen else b"") + piece:
                # libxml2 never sees the DTD; a CDA or not is told from the bytes: the
                # root element's name within the header limit
                self._finder, self._seen, self._state = None, [], _DTD
                self._keep_head(chunk[start:], self.header_limit)
                return
            self._seen.append(piece)
            self._parsed += len(piece)
            self._keep_head(piece)
            try:
                self._finder.feed(piece)
                root = next((el for _, el in self._finder.read_events()), None)
            except etree.XMLSyntaxError as exc:
                # unreadable before any element: a CDA only if it says so
                if looks_like_cda(self._head):
                    self.is_cda = True
                    self._fail(f"malformed XML: {exc}")
                else:
                    self._stop(is_cda=False)
                return
            if root is None:
                if self._parsed > self.header_limit:   # a CDA could hide behind it
                    self._fail(f"no root element in the first {self.header_limit} bytes")
                    return
                continue
            if root.tag != CLINICAL_DOCUMENT:
                self._stop(is_cda=False)
                return
            self.is_cda = True
            if has_doctype(root):       # e.g. a DOCTYPE in another encoding
                self._fail(_NO_DTD)
                return
            seen, rest = b"".join(self._seen), chunk[start + SLICE:]
            self._finder, self._seen, self._head, self._parsed = None, [], b"", 0
            self._state = _HEADER
            self._parser = safe_pull_parser(("start", "end"), _TAGS)
            self._parse(seen)
            if rest:
                self._parse(rest)
            return

    def _keep_head(self, data: bytes, limit: int = HEAD) -> None:
        if len(self._head) < limit:
            self._head += data[:limit - len(self._head)]

    def _parse(self, data: bytes) -> None:
        """Feed the main parser ``PARSE_SLICE`` bytes at a time, so that it never runs far
        past the point where it can stop (the body's start, the summary limit)."""
        for start in range(0, len(data), PARSE_SLICE):
            if self._state == _DONE:
                return
            piece = data[start:start + PARSE_SLICE]
            self._parsed += len(piece)
            try:
                self._parser.feed(piece)
                for event, el in self._parser.read_events():
                    self._event(event, el)
                    if self._state == _DONE:
                        return
            except etree.XMLSyntaxError as exc:
                self._drain()   # the events before the error: where was it?
                if self._state == _DONE:
                    return
                if self._state == _BODY:
                    self._lose_facts(f"the structured body cannot be read ({exc})")
                else:
                    self._fail(f"malformed XML: {exc}")
                return
            if self._state == _HEADER and self._parsed > self.header_limit:
                self._fail(f"the header is larger than {self.header_limit} bytes")
                return
            if self._state == _BODY and self._parsed > self.summary_limit:
                self._lose_facts(f"larger than {self.summary_limit} bytes")
                return

    def _drain(self) -> None:
        try:
            for event, el in self._parser.read_events():
                self._event(event, el)
                if self._state == _DONE:
                    return
        except etree.XMLSyntaxError:
            pass

    def _event(self, event: str, el: etree._Element) -> None:
        state = self._state
        if state == _HEADER:
            if event == "start" and el.tag == COMPONENT and el.getparent() is not None \
                    and el.getparent().getparent() is None:
                self._body, self._state = el, _BODY_KIND
            elif event == "start" and el.getparent() is None:
                self._root = el
        elif state == _BODY_KIND:
            if event == "start" and el.tag == NON_XML_BODY:
                self._state = _NON_XML
            elif event == "start" and el.tag == STRUCTURED_BODY:
                if self.want_facts:
                    from .summary import BodyFacts
                    self._facts, self._state = BodyFacts(), _BODY
                else:
                    self._stop(is_cda=True)
            elif event == "end":  # an empty or unknown body
                self._stop(is_cda=True)
        elif state == _NON_XML:
            if event == "start" and el.tag == TEXT:
                self._media = (el.get("mediaType"), el.get("representation"))
                self._stop(is_cda=True)
            elif event == "end":
                self._stop(is_cda=True)
        elif state == _BODY and event == "end":
            if el.tag == ENTRY:
                self._facts.add(el)
                _forget(el)
            elif el.tag == TEXT and el.getparent() is not None \
                    and el.getparent().tag == SECTION:
                _forget(el)
            elif el.tag == STRUCTURED_BODY:
                self._facts.add(el)     # statements outside any entry (not CDA-valid)
                self._stop(is_cda=True)

    # ------------------------------------------------------------------ outcomes

    def _stop(self, is_cda: bool) -> None:
        self.is_cda = is_cda
        self._state = _DONE
        self._finder = self._parser = None
        self._seen = []

    def _fail(self, message: str) -> None:
        self._error = message
        self._root = None
        self._stop(is_cda=True)

    def _lose_facts(self, why: str) -> None:
        log.info("structured CDA body not summarised: %s", why)
        self._facts = None
        self._stop(is_cda=True)

    def result(self) -> tuple[CdaHeader | None, list | None]:
        """(header, facts): header None when the document is not a CDA; facts None when
        the body was not read to its end (nonXMLBody, not asked, too large, unreadable).
        Raises :class:`CdaError` when the header cannot be read safely."""
        if self._state == _DTD:
            if b"ClinicalDocument" not in self._head:
                return None, None
            self._fail(_NO_DTD)
        if self._state == _ROOT:           # the whole document was fed: no element at all
            if not looks_like_cda(self._head):
                return None, None
            self._fail("no root element")
        if self._state in (_HEADER, _BODY_KIND, _NON_XML, _BODY):
            self._finish()
        if self._error is not None:
            raise CdaError(self._error)
        if not self.is_cda or self._root is None:
            return None, None
        root = self._root
        body = self._body
        structured = self._facts is not None or (body is not None and
                                                 body.find(STRUCTURED_BODY) is not None)
        if body is not None:
            root.remove(body)           # the header tree only
            self._body = None
        header = read_header(root)
        header = dataclasses.replace(
            header, structured=structured,
            non_xml_body=(*self._media, None) if self._media is not None else None)
        facts = self._facts.facts() if self._facts is not None else None
        return header, facts

    def _finish(self) -> None:
        """The document ended before the parser stopped by itself: close it to catch a
        truncated or malformed end."""
        state = self._state
        try:
            self._parser.close()
            for event, el in self._parser.read_events():
                self._event(event, el)
        except etree.XMLSyntaxError as exc:
            if state in (_HEADER, _BODY_KIND, _NON_XML):
                self._fail(f"malformed XML: {exc}")
                return
            self._facts = None
        if self._state == _BODY:         # ended without closing structuredBody
            self._facts = None
        self._stop(is_cda=True)


def _forget(el: etree._Element) -> None:
    """Free an element already read, and the siblings read before it."""
    el.clear(keep_tail=True)
    parent = el.getparent()
    if parent is not None:
        while el.getprevious() is not None:
            del parent[0]


def read_header_only(data: bytes) -> CdaHeader:
    """The header of a CDA held in memory, without parsing its body (the metadata of a
    CDA with a large PDF): :class:`CdaError` when it is not a CDA or not readable."""
    stream = CdaStream(facts=False)
    stream.feed(data)
    header, _ = stream.result()
    if header is None:
        raise CdaError("not a CDA document: the root element is not ClinicalDocument "
                       "(urn:hl7-org:v3)")
    return header
