"""Conversion of ebRIM/ebRS 2.1 (XDS.a) SubmitObjectsRequest files to ebRIM 3.0 (XDS.b).

275 files of the NIST testkit are written in ebRIM 2.1; the toolkit parses them and
re-serializes them as ebRIM 3.0 when it sends an XDS.b transaction
(``Metadata.getV3SubmitObjectsRequest``).  This module does the same mechanically:

* ``rs:SubmitObjectsRequest`` (``urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1``)
  -> ``lcm:SubmitObjectsRequest`` (lcm 3.0); ``rim:LeafRegistryObjectList`` ->
  ``rim:RegistryObjectList`` (rim 3.0).
* ``ObjectRef`` elements naming the XDS classification/identification schemes,
  nodes and object types are dropped (ebRIM 3.0 registries know them; the toolkit
  does not send them either); other ObjectRefs are kept.
* Children are re-ordered to the ebRIM 3.0 sequence ``Slot*, Name?, Description?,
  VersionInfo?, Classification*, ExternalIdentifier*`` (2.1 puts Name first);
  empty ``Description`` elements are dropped.
* ``Classification``, ``ExternalIdentifier`` and ``Association`` get the ``id``
  ebRIM 3.0 requires (a fresh ``urn:uuid:``); nested ``ExternalIdentifier`` get
  ``registryObject`` and nested ``Classification`` ``classifiedObject`` = parent id.
* ``associationType`` ``HasMember`` -> ``urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember``;
  ``RPLC``, ``APND``, ``XFRM``, ``XFRM_RPLC``, ``signs`` -> ``urn:ihe:iti:2007:AssociationType:*``;
  bare ``status`` values get the ``urn:oasis:names:tc:ebxml-regrep:StatusType:`` prefix.
* ``LocalizedString`` ``lang`` -> ``xml:lang``.

Anything else (another root element, an ebRIM 2.1 SQL ``AdhocQueryRequest``, an
element or attribute without an ebRIM 3.0 counterpart) raises
:class:`ConversionError`; the runner then SKIPs the step and counts it in the
summary as "ebRIM 2.1, could not be converted".
"""
from __future__ import annotations

import uuid

from lxml import etree

RS21 = "urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1"
RIM21 = "urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1"
QUERY21 = "urn:oasis:names:tc:ebxml-regrep:query:xsd:2.1"
RIM3 = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM3 = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
XML_NS = "http://www.w3.org/XML/1998/namespace"

V21_NAMESPACES = {RS21, RIM21, QUERY21}

#: UUIDs of the XDS classification schemes, identification schemes, classification
#: nodes and object types (ITI TF-3 4.2.5); ObjectRefs to them are not sent.
XDS_CONSTANT_UUIDS = {
    f"urn:uuid:{u}" for u in (
        "7edca82f-054d-47f2-a032-9b2a5b5186c1",  # DocumentEntry objectType (stable)
        "34268e47-fdf5-41a6-ba33-82133c465248",  # DocumentEntry objectType (on demand)
        "7edca82f-054d-47f2-a032-9b2a5b518fff",  # (2.1 era) ExtrinsicObject type scheme
        "a54d6aa5-d40d-43f9-88c5-b4633d873bdd",  # SubmissionSet node
        "d9d542f3-6cc4-48b6-8870-ea235fbc94c2",  # Folder node
        "f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a",  # Folder.patientId
        "75df8f67-9973-4fbe-a900-df66cefecc5a",  # Folder.uniqueId
        "1ba97051-7806-41a8-a48b-8fce7af683c5",  # Folder.codeList
        "96fdda7c-d067-4183-912e-bf5ee74998a8",  # SubmissionSet.uniqueId
        "554ac39e-e3fe-47fe-b233-965d2a147832",  # SubmissionSet.sourceId
        "6b5aea1a-874d-4603-a4bc-96a0a7b38446",  # SubmissionSet.patientId
        "aa543740-bdda-424e-8c96-df4873be8500",  # SubmissionSet.contentTypeCode
        "a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d",  # SubmissionSet.author
        "93606bcf-9494-43ec-9b4e-a7748d1a838d",  # DocumentEntry.author
        "41a5887f-8865-4c09-adf7-e362475b143a",  # DocumentEntry.classCode
        "f4f85eac-e6cb-4883-b524-f2705394840f",  # DocumentEntry.confidentialityCode
        "2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4",  # DocumentEntry.eventCodeList
        "a09d5840-386c-46f2-b5ad-9c3699a4309d",  # DocumentEntry.formatCode
        "f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",  # DocumentEntry.healthCareFacilityTypeCode
        "cccf5598-8b07-4b77-a05e-ae952c785ead",  # DocumentEntry.practiceSettingCode
        "f0306f51-975f-434e-a61c-c59651d33983",  # DocumentEntry.typeCode
        "2e82c1f6-a085-4c72-9da3-8640a32e42ab",  # DocumentEntry.uniqueId
        "58a6f841-87b3-4a3e-92fd-a8ffeff98427",  # DocumentEntry.patientId
        "abd807a3-4432-4053-87b4-fd82c643d1f3",  # Association documentation
        "10aa1a4b-715a-4120-bfd0-9760414112c8",  # DocumentEntry.limitedMetadata
        "5003a9db-8d8d-49e6-bf0c-990e34ac7707",  # SubmissionSet.limitedMetadata
        "917dc511-f7da-4417-8664-de25b34d3def",  # ReferenceIdList (old)
    )
}

ASSOCIATION_TYPES_V3 = {
    "HasMember": "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
    "RPLC": "urn:ihe:iti:2007:AssociationType:RPLC",
    "APND": "urn:ihe:iti:2007:AssociationType:APND",
    "XFRM": "urn:ihe:iti:2007:AssociationType:XFRM",
    "XFRM_RPLC": "urn:ihe:iti:2007:AssociationType:XFRM_RPLC",
    "signs": "urn:ihe:iti:2007:AssociationType:signs",
    "IsSnapshotOf": "urn:ihe:iti:2010:AssociationType:IsSnapshotOf",
}

STATUS_PREFIX = "urn:oasis:names:tc:ebxml-regrep:StatusType:"

#: ebRIM 3.0 attributes allowed per element (rim.xsd); others raise ConversionError.
_ATTRS = {
    "ExtrinsicObject": {"id", "home", "lid", "objectType", "status", "mimeType", "isOpaque"},
    "RegistryPackage": {"id", "home", "lid", "objectType", "status"},
    "Association": {"id", "home", "lid", "objectType", "status", "associationType",
                    "sourceObject", "targetObject"},
    "Classification": {"id", "home", "lid", "objectType", "status", "classificationScheme",
                       "classifiedObject", "classificationNode", "nodeRepresentation"},
    "ExternalIdentifier": {"id", "home", "lid", "objectType", "status", "registryObject",
                           "identificationScheme", "value"},
}
#: 2.1 attributes that have no 3.0 counterpart and carry no XDS meaning: dropped silently.
_DROPPED_ATTRS = {"majorVersion", "minorVersion", "stability", "expiration", "userVersion",
                  "accessControlPolicy", "contentVersion"}

_TOP_LEVEL = ("ExtrinsicObject", "RegistryPackage", "Association", "Classification", "ObjectRef")


class ConversionError(ValueError):
    """The ebRIM 2.1 document cannot be converted to ebRIM 3.0."""


def is_ebrim21(root: etree._Element) -> bool:
    """True when ``root`` (or anything in it) uses an ebRIM/ebRS 2.1 namespace."""
    return any(isinstance(el.tag, str) and etree.QName(el).namespace in V21_NAMESPACES
               for el in root.iter())


def _q(local: str) -> str:
    return f"{{{RIM3}}}{local}"


def _local(el: etree._Element) -> str:
    q = etree.QName(el)
    if q.namespace != RIM21:
        raise ConversionError(f"unexpected element {el.tag} in ebRIM 2.1 metadata")
    return q.localname


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _copy_attrs(src: etree._Element, dst: etree._Element, kind: str) -> None:
    allowed = _ATTRS[kind]
    for name, value in src.attrib.items():
        if name in _DROPPED_ATTRS:
            continue
        if name not in allowed:
            raise ConversionError(f"attribute {name!r} of {kind} has no ebRIM 3.0 counterpart")
        if name == "status" and ":" not in value:
            value = STATUS_PREFIX + value
        if name == "associationType" and ":" not in value:
            if value not in ASSOCIATION_TYPES_V3:
                raise ConversionError(f"unknown ebRIM 2.1 associationType {value!r}")
            value = ASSOCIATION_TYPES_V3[value]
        dst.set(name, value)


def _international_string(src: etree._Element, tag: str) -> etree._Element | None:
    out = etree.Element(_q(tag))
    for ls in src:
        if not isinstance(ls.tag, str):
            continue
        if _local(ls) != "LocalizedString":
            raise ConversionError(f"unexpected {_local(ls)} in {tag}")
        new = etree.SubElement(out, _q("LocalizedString"))
        for name, value in ls.attrib.items():
            if name == "lang":
                new.set(f"{{{XML_NS}}}lang", value)
            elif name in ("value", "charset") or name == f"{{{XML_NS}}}lang":
                new.set(name, value)
            else:
                raise ConversionError(f"attribute {name!r} of LocalizedString")
    return out if len(out) else None


def _slot(src: etree._Element) -> etree._Element:
    out = etree.Element(_q("Slot"))
    for name, value in src.attrib.items():
        if name not in ("name", "slotType"):
            raise ConversionError(f"attribute {name!r} of Slot")
        out.set(name, value)
    for child in src:
        if not isinstance(child.tag, str):
            continue
        if _local(child) != "ValueList":
            raise ConversionError(f"unexpected {_local(child)} in Slot")
        vl = etree.SubElement(out, _q("ValueList"))
        for v in child:
            if not isinstance(v.tag, str):
                continue
            if _local(v) != "Value":
                raise ConversionError(f"unexpected {_local(v)} in ValueList")
            etree.SubElement(vl, _q("Value")).text = v.text
    return out


def _registry_object(src: etree._Element, parent_id: str | None = None) -> etree._Element:
    kind = _local(src)
    if kind not in _ATTRS:
        raise ConversionError(f"ebRIM 2.1 element {kind} has no XDS.b counterpart")
    out = etree.Element(_q(kind))
    _copy_attrs(src, out, kind)
    if kind in ("Classification", "ExternalIdentifier", "Association") and not out.get("id"):
        out.set("id", _new_id())
    if kind == "ExternalIdentifier" and not out.get("registryObject"):
        if parent_id is None:
            raise ConversionError("top-level ExternalIdentifier without registryObject")
        out.set("registryObject", parent_id)
    if kind == "Classification" and not out.get("classifiedObject") and parent_id is not None:
        out.set("classifiedObject", parent_id)
    my_id = out.get("id")

    slots, names, descriptions, classifications, identifiers = [], [], [], [], []
    for child in src:
        if not isinstance(child.tag, str):
            continue
        ck = _local(child)
        if ck == "Slot":
            slots.append(_slot(child))
        elif ck == "Name":
            n = _international_string(child, "Name")
            if n is not None:
                names.append(n)
        elif ck == "Description":
            d = _international_string(child, "Description")
            if d is not None:
                descriptions.append(d)
        elif ck == "Classification":
            classifications.append(_registry_object(child, my_id))
        elif ck == "ExternalIdentifier":
            identifiers.append(_registry_object(child, my_id))
        else:
            raise ConversionError(f"unexpected {ck} inside {kind}")
    if len(names) > 1 or len(descriptions) > 1:
        raise ConversionError(f"{kind} {my_id} has several Name or Description elements")
    for part in (*slots, *names, *descriptions, *classifications, *identifiers):
        out.append(part)
    return out


def convert_submit_objects_request(root: etree._Element) -> etree._Element:
    """Return the ebRIM 3.0 ``lcm:SubmitObjectsRequest`` equivalent of a 2.1 one."""
    q = etree.QName(root)
    if q.namespace == QUERY21 or q.localname == "AdhocQueryRequest":
        raise ConversionError("ebRIM 2.1 (XDS.a SQL) query: no stored-query equivalent")
    if q.namespace != RS21 or q.localname != "SubmitObjectsRequest":
        raise ConversionError(f"root element {root.tag} is not an ebRS 2.1 SubmitObjectsRequest")
    sor = etree.Element(f"{{{LCM3}}}SubmitObjectsRequest", nsmap={"lcm": LCM3, "rim": RIM3})
    rol = etree.SubElement(sor, _q("RegistryObjectList"))
    lists = [c for c in root if isinstance(c.tag, str)]
    for lst in lists:
        if _local(lst) != "LeafRegistryObjectList":
            raise ConversionError(f"unexpected {_local(lst)} in SubmitObjectsRequest")
        for obj in lst:
            if not isinstance(obj.tag, str):
                continue
            kind = _local(obj)
            if kind not in _TOP_LEVEL:
                raise ConversionError(f"ebRIM 2.1 {kind} has no XDS.b counterpart")
            if kind == "ObjectRef":
                ref = obj.get("id", "")
                if ref and ref not in XDS_CONSTANT_UUIDS:
                    etree.SubElement(rol, _q("ObjectRef"), id=ref)
                continue
            rol.append(_registry_object(obj))
    return sor
