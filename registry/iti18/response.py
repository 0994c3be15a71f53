"""query:AdhocQueryResponse bytes (ebRS 3.0 query.xsd; ITI TF-2a §3.18.4.1.3).

LeafClass answers are the stored ebRIM elements (``registry_object.ebrim``, written by
:func:`registry.store.serialize`) concatenated verbatim: no DOM is built for an answer.
When the affinity domain has a homeCommunityId, it is put into each element's start tag
by byte surgery (ITI TF-2a §3.18.4.1.3: ``home`` on every returned object and ObjectRef).
"""
from __future__ import annotations

import re
from xml.sax.saxutils import quoteattr

from registry import errors as E
from soapstack.namespaces import QUERY, RIM, RS

_OPEN = (f'<query:AdhocQueryResponse xmlns:query="{QUERY}" xmlns:rim="{RIM}" '
         f'xmlns:rs="{RS}" status="').encode()
_CLOSE = b"</query:AdhocQueryResponse>"
_LIST_OPEN = b"<rim:RegistryObjectList>"
_LIST_CLOSE = b"</rim:RegistryObjectList>"
_EMPTY_LIST = b"<rim:RegistryObjectList/>"

#: an existing home attribute in a start tag (values never hold a raw '"').
_HOME_ATTR = re.compile(rb'\shome="[^"]*"')


def home_attribute(home: str | None) -> bytes:
    """`` home="..."`` (leading space) or b'' when there is no home community."""
    return b"" if not home else b" home=" + quoteattr(home).encode()


def with_home(blob: bytes, home_attr: bytes) -> bytes:
    """Set ``home`` on the root element of a stored ebRIM blob.

    The blob starts with ``<rim:Name`` (store.serialize) and lxml escapes ``>`` inside
    attribute values, so the first ``>`` ends the start tag. An existing home is
    replaced; otherwise the attribute goes right after the element name.
    """
    if not home_attr:
        return blob
    end = blob.index(b">")
    m = _HOME_ATTR.search(blob, 0, end)
    if m:
        return blob[:m.start()] + home_attr + blob[m.end():]
    name_end = 1
    while name_end < end and blob[name_end] not in b" \t\r\n/":
        name_end += 1
    return blob[:name_end] + home_attr + blob[name_end:]


def leaf_class(blobs: list[bytes], home: str | None,
               warnings: list[E.XdsError] | None = None) -> bytes:
    """Success with the objects' ebRIM (``returnType="LeafClass"``)."""
    attr = home_attribute(home)
    parts = [_OPEN, E.SUCCESS.encode(), b'">', _errors(warnings)]
    if blobs:
        parts.append(_LIST_OPEN)
        parts.extend([with_home(b, attr) for b in blobs] if attr else blobs)
        parts.append(_LIST_CLOSE)
    else:
        parts.append(_EMPTY_LIST)
    parts.append(_CLOSE)
    return b"".join(parts)


def object_refs(ids: list[str], home: str | None,
                warnings: list[E.XdsError] | None = None) -> bytes:
    """Success with one ``rim:ObjectRef`` per object (``returnType="ObjectRef"``)."""
    attr = home_attribute(home)
    parts = [_OPEN, E.SUCCESS.encode(), b'">', _errors(warnings)]
    if ids:
        parts.append(_LIST_OPEN)
        parts.extend(b"<rim:ObjectRef id=" + quoteattr(i).encode() + attr + b"/>" for i in ids)
        parts.append(_LIST_CLOSE)
    else:
        parts.append(_EMPTY_LIST)
    parts.append(_CLOSE)
    return b"".join(parts)


def failure(errors: list[E.XdsError]) -> bytes:
    """Failure with the RegistryErrorList and the (schema-required) empty object list."""
    return b"".join([_OPEN, E.response_status(errors).encode(), b'">', _errors(errors),
                     _EMPTY_LIST, _CLOSE])


def _errors(errors: list[E.XdsError] | None) -> bytes:
    return E.error_list_xml(errors).encode() if errors else b""
