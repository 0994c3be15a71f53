"""Hostile-input-safe XML parsing (SOAP 1.2 Part 1 §5: no DTD in a SOAP message).

Every XML byte that enters OpenDMP from the network goes through :func:`parse_xml`:
no DTD loading, no entity resolution (so no XXE and no billion-laughs expansion),
no network access, libxml2's default depth/size limits kept (``huge_tree`` off), and
any document that carries a DOCTYPE at all is refused.
"""
from __future__ import annotations

from lxml import etree


class XmlRejected(ValueError):
    """The bytes are not acceptable XML; the message says why, for a SOAP fault."""


#: the hostile-input settings of every parser OpenDMP builds for network bytes.
SAFE_OPTIONS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=False,
    collect_ids=False,
)


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(**SAFE_OPTIONS)


def safe_pull_parser(events: tuple[str, ...] = ("start",), tag=None) -> etree.XMLPullParser:
    """An incremental parser with the same settings as :func:`parse_xml`; the caller must
    still refuse a DOCTYPE (:func:`has_doctype` once the root element has started)."""
    return etree.XMLPullParser(events=events, tag=tag, **SAFE_OPTIONS)


def has_doctype(element: etree._Element) -> bool:
    """Whether the document ``element`` belongs to declared a DOCTYPE (internal subset or
    external identifier); valid as soon as the root's start tag has been parsed."""
    info = element.getroottree().docinfo
    return bool(info.doctype) or info.internalDTD is not None or info.externalDTD is not None


_PARSER = _new_parser()


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML bytes into an element, refusing DTDs and entities."""
    # Refuse DOCTYPE before libxml2 even sees it: entity declarations live there.
    if b"<!DOCTYPE" in data[:4096]:
        raise XmlRejected("DTDs and entity declarations are not allowed in SOAP messages")
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlRejected(f"malformed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise XmlRejected("DTDs are not allowed in SOAP messages")
    return root


def to_bytes(element: etree._Element) -> bytes:
    """Serialize an element without XML declaration (for concatenation into envelopes)."""
    return etree.tostring(element, encoding="UTF-8", xml_declaration=False)
