"""ebRIM 3.0 <-> XDS model transformers (ITI TF-3 §4.2.3, OASIS ebRIM 3.0 §2-4).

:func:`parse_registry_object_list` reads a ``rim:RegistryObjectList`` into a
:class:`~registry.model.Submission`; :func:`to_element` writes any model object back as
its ebRIM element, in schema order, with everything the model did not interpret.
Parsing is lenient about what it cannot understand (kept in ``extra_*``); judging the
metadata is :mod:`registry.validation`'s job.
"""
from __future__ import annotations

import uuid
from typing import Callable

from lxml import etree

from soapstack.namespaces import LCM, RIM

from . import vocabulary as V
from .model import (
    Association,
    Author,
    Classification,
    Code,
    DocumentEntry,
    ExternalIdentifier,
    Folder,
    LocalizedString,
    ObjectRef,
    RegistryObject,
    Slot,
    Submission,
    SubmissionSet,
)

R = "{%s}" % RIM
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NSMAP = {"rim": RIM}


class EbRimError(ValueError):
    """Metadata that cannot be read as ebRIM 3.0 (maps to XDSRegistryMetadataError)."""


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


# ======================================================================= reading

def _localized(parent: etree._Element | None) -> list[LocalizedString]:
    if parent is None:
        return []
    return [
        LocalizedString(ls.get("value", ""), ls.get(XML_LANG), ls.get("charset"))
        for ls in parent.iterchildren(R + "LocalizedString")
    ]


def _slot(el: etree._Element) -> Slot:
    name = el.get("name")
    if not name:
        raise EbRimError("a Slot has no name")
    values = []
    vl = el.find(R + "ValueList")
    if vl is not None:
        values = [(v.text or "") for v in vl.iterchildren(R + "Value")]
    return Slot(name, values, el.get("slotType"))


def _generic_classification(el: etree._Element, owner: str | None) -> Classification:
    return Classification(
        id=el.get("id") or new_uuid(),
        classified_object=el.get("classifiedObject") or owner or "",
        scheme=el.get("classificationScheme"),
        node_representation=el.get("nodeRepresentation"),
        classification_node=el.get("classificationNode"),
        name=_localized(el.find(R + "Name")),
        description=_localized(el.find(R + "Description")),
        slots=[_slot(s) for s in el.iterchildren(R + "Slot")],
    )


def _code(c: Classification) -> Code:
    scheme = next((s.values[0] for s in c.slots if s.name == "codingScheme" and s.values), "")
    return Code(c.node_representation or "", scheme, c.name, c.id)


_AUTHOR_SLOTS = {
    "authorPerson": "person",
    "authorInstitution": "institutions",
    "authorRole": "roles",
    "authorSpecialty": "specialties",
    "authorTelecommunication": "telecoms",
}


def _author(c: Classification) -> Author:
    author = Author(id=c.id)
    for s in c.slots:
        attr = _AUTHOR_SLOTS.get(s.name)
        if attr == "person":
            author.person = s.values[0] if s.values else None
            if len(s.values) > 1:
                raise EbRimError("authorPerson must have a single value (ITI TF-3 4.2.3.1.4)")
        elif attr:
            getattr(author, attr).extend(s.values)
        else:
            author.extra_slots.append(s)
    return author


def _common(obj: RegistryObject, el: etree._Element) -> list[etree._Element]:
    """Fill id/status/lid/home/Name/Description/VersionInfo; return remaining children."""
    obj.status = el.get("status")
    obj.lid = el.get("lid")
    obj.home = el.get("home")
    rest = []
    for child in el:
        tag = child.tag
        if tag == R + "Name":
            obj.title = _localized(child)
        elif tag == R + "Description":
            obj.comments = _localized(child)
        elif tag == R + "VersionInfo":
            obj.version = child.get("versionName")
        elif isinstance(tag, str):
            rest.append(child)
    return rest


def _single(slot: Slot, what: str) -> str:
    if len(slot.values) != 1:
        raise EbRimError(f"{what} slot {slot.name} must have exactly one value")
    return slot.values[0]


def _external_identifier(el: etree._Element, owner: str) -> ExternalIdentifier:
    scheme = el.get("identificationScheme")
    value = el.get("value")
    if not scheme or value is None:
        raise EbRimError("an ExternalIdentifier lacks identificationScheme or value")
    return ExternalIdentifier(
        id=el.get("id") or new_uuid(),
        registry_object=el.get("registryObject") or owner,
        scheme=scheme,
        value=value,
        name=_localized(el.find(R + "Name")),
    )


#: standard ExternalIdentifiers: scheme -> (key in external_identifier_ids, model attribute)
_EXTERNAL_IDS = {
    V.DE_PATIENT_ID: ("patientId", "patient_id"), V.DE_UNIQUE_ID: ("uniqueId", "unique_id"),
    V.SS_PATIENT_ID: ("patientId", "patient_id"), V.SS_UNIQUE_ID: ("uniqueId", "unique_id"),
    V.SS_SOURCE_ID: ("sourceId", "source_id"),
    V.FOL_PATIENT_ID: ("patientId", "patient_id"), V.FOL_UNIQUE_ID: ("uniqueId", "unique_id"),
}


def _take_external_identifier(obj: RegistryObject, ei: ExternalIdentifier,
                              schemes: tuple[str, ...]) -> None:
    """Set a standard ExternalIdentifier of ``obj`` (one of ``schemes``), or keep it as
    an extra one."""
    if ei.scheme in schemes:
        key, attr = _EXTERNAL_IDS[ei.scheme]
        setattr(obj, attr, ei.value)
        obj.external_identifier_ids[key] = ei.id
    else:
        obj.extra_external_identifiers.append(ei)


_DE_SINGLE_SLOTS = {
    "creationTime": "creation_time",
    "serviceStartTime": "service_start_time",
    "serviceStopTime": "service_stop_time",
    "hash": "hash",
    "size": "size",
    "languageCode": "language_code",
    "legalAuthenticator": "legal_authenticator",
    "repositoryUniqueId": "repository_unique_id",
    "sourcePatientId": "source_patient_id",
    V.DOCUMENT_AVAILABILITY: "document_availability",
}
_DE_MULTI_SLOTS = {
    "sourcePatientInfo": "source_patient_info",
    "URI": "uri",
    V.REFERENCE_ID_LIST: "reference_ids",
}
_DE_CODES = {
    V.DE_CLASS_CODE: "class_code",
    V.DE_TYPE_CODE: "type_code",
    V.DE_FORMAT_CODE: "format_code",
    V.DE_FACILITY_TYPE_CODE: "healthcare_facility_type_code",
    V.DE_PRACTICE_SETTING_CODE: "practice_setting_code",
}
_DE_CODE_LISTS = {
    V.DE_CONFIDENTIALITY_CODE: "confidentiality_codes",
    V.DE_EVENT_CODE: "event_codes",
}


def parse_document_entry(el: etree._Element) -> DocumentEntry:
    """rim:ExtrinsicObject -> DocumentEntry (ITI TF-3 Table 4.2.3.2-1)."""
    de = DocumentEntry(id=el.get("id") or "")
    de.object_type = el.get("objectType") or ""
    de.mime_type = el.get("mimeType")
    de.is_opaque = el.get("isOpaque")
    seen_slots: set[str] = set()
    for child in _common(de, el):
        tag = child.tag
        if tag == R + "Slot":
            slot = _slot(child)
            if slot.name in seen_slots:
                raise EbRimError(f"slot {slot.name} appears twice on DocumentEntry {de.id}")
            seen_slots.add(slot.name)
            if slot.name in _DE_SINGLE_SLOTS:
                setattr(de, _DE_SINGLE_SLOTS[slot.name], _single(slot, "DocumentEntry"))
            elif slot.name in _DE_MULTI_SLOTS:
                setattr(de, _DE_MULTI_SLOTS[slot.name], list(slot.values))
            else:
                de.extra_slots.append(slot)
        elif tag == R + "Classification":
            c = _generic_classification(child, de.id)
            if c.scheme == V.DE_AUTHOR:
                de.authors.append(_author(c))
            elif c.scheme in _DE_CODES:
                attr = _DE_CODES[c.scheme]
                if getattr(de, attr) is not None:
                    raise EbRimError(f"DocumentEntry {de.id} has more than one {attr}")
                setattr(de, attr, _code(c))
            elif c.scheme in _DE_CODE_LISTS:
                getattr(de, _DE_CODE_LISTS[c.scheme]).append(_code(c))
            elif c.scheme == V.DE_LIMITED_METADATA:
                de.limited_metadata = c.id
            else:
                de.extra_classifications.append(c)
        elif tag == R + "ExternalIdentifier":
            _take_external_identifier(de, _external_identifier(child, de.id),
                                      (V.DE_PATIENT_ID, V.DE_UNIQUE_ID))
        elif tag == R + "ContentVersionInfo":
            de.content_version = child.get("versionName")
    return de


def _parse_package(el: etree._Element) -> tuple[RegistryObject, list[Classification]]:
    """Read a RegistryPackage's shared parts; the caller decides SubmissionSet or Folder."""
    obj = RegistryObject(id=el.get("id") or "")
    rest = _common(obj, el)
    slots = []
    classifications = []
    ext_ids = []
    for child in rest:
        if child.tag == R + "Slot":
            slots.append(_slot(child))
        elif child.tag == R + "Classification":
            classifications.append(_generic_classification(child, obj.id))
        elif child.tag == R + "ExternalIdentifier":
            ext_ids.append(_external_identifier(child, obj.id))
    obj.extra_slots = slots
    obj.extra_external_identifiers = ext_ids
    return obj, classifications


def _base_fields(src: RegistryObject) -> dict:
    return dict(
        id=src.id, status=src.status, lid=src.lid, version=src.version, home=src.home,
        title=src.title, comments=src.comments,
    )


def _to_submission_set(base: RegistryObject, cls: list[Classification]) -> SubmissionSet:
    ss = SubmissionSet(**_base_fields(base))
    for slot in base.extra_slots:
        if slot.name == "submissionTime":
            ss.submission_time = _single(slot, "SubmissionSet")
        elif slot.name == "intendedRecipient":
            ss.intended_recipients = list(slot.values)
        else:
            ss.extra_slots.append(slot)
    for c in cls:
        if c.classification_node == V.SUBMISSION_SET_NODE:
            ss.node_classification_id = c.id
        elif c.scheme == V.SS_AUTHOR:
            ss.authors.append(_author(c))
        elif c.scheme == V.SS_CONTENT_TYPE_CODE:
            if ss.content_type_code is not None:
                raise EbRimError(f"SubmissionSet {ss.id} has more than one contentTypeCode")
            ss.content_type_code = _code(c)
        elif c.scheme == V.SS_LIMITED_METADATA:
            ss.limited_metadata = c.id
        else:
            ss.extra_classifications.append(c)
    for ei in base.extra_external_identifiers:
        _take_external_identifier(ss, ei, (V.SS_PATIENT_ID, V.SS_SOURCE_ID, V.SS_UNIQUE_ID))
    return ss


def _to_folder(base: RegistryObject, cls: list[Classification]) -> Folder:
    fol = Folder(**_base_fields(base))
    for slot in base.extra_slots:
        if slot.name == "lastUpdateTime":
            fol.last_update_time = _single(slot, "Folder")
        else:
            fol.extra_slots.append(slot)
    for c in cls:
        if c.classification_node == V.FOLDER_NODE:
            fol.node_classification_id = c.id
        elif c.scheme == V.FOL_CODE_LIST:
            fol.codes.append(_code(c))
        elif c.scheme == V.FOL_LIMITED_METADATA:
            fol.limited_metadata = c.id
        else:
            fol.extra_classifications.append(c)
    for ei in base.extra_external_identifiers:
        _take_external_identifier(fol, ei, (V.FOL_PATIENT_ID, V.FOL_UNIQUE_ID))
    return fol


def parse_association(el: etree._Element) -> Association:
    assoc = Association(id=el.get("id") or "")
    assoc.type = el.get("associationType") or ""
    assoc.source = el.get("sourceObject") or ""
    assoc.target = el.get("targetObject") or ""
    for child in _common(assoc, el):
        if child.tag == R + "Slot":
            assoc.extra_slots.append(_slot(child))
        elif child.tag == R + "Classification":
            assoc.extra_classifications.append(_generic_classification(child, assoc.id))
        elif child.tag == R + "ExternalIdentifier":
            assoc.extra_external_identifiers.append(_external_identifier(child, assoc.id))
    return assoc


def parse_registry_object_list(rol: etree._Element) -> Submission:
    """rim:RegistryObjectList -> Submission. Top-level Classifications that mark a
    RegistryPackage as SubmissionSet or Folder (ITI TF-3 §4.2.1.2) are attached to it."""
    sub = Submission()
    packages: list[tuple[RegistryObject, list[Classification]]] = []
    loose: list[Classification] = []
    for child in rol:
        tag = child.tag
        if tag == R + "ExtrinsicObject":
            sub.documents.append(parse_document_entry(child))
        elif tag == R + "RegistryPackage":
            packages.append(_parse_package(child))
        elif tag == R + "Association":
            sub.associations.append(parse_association(child))
        elif tag == R + "Classification":
            loose.append(_generic_classification(child, None))
        elif tag == R + "ObjectRef":
            sub.object_refs.append(ObjectRef(child.get("id") or "", child.get("home")))
        elif isinstance(tag, str):
            raise EbRimError(f"unexpected element {etree.QName(child).localname} in RegistryObjectList")
    by_id = {pkg.id: cls for pkg, cls in packages}
    for c in loose:
        if c.classified_object in by_id:
            by_id[c.classified_object].append(c)
        else:
            sub.classifications.append(c)
    for pkg, cls in packages:
        nodes = {c.classification_node for c in cls if c.classification_node}
        if V.SUBMISSION_SET_NODE in nodes:
            sub.submission_sets.append(_to_submission_set(pkg, cls))
        elif V.FOLDER_NODE in nodes:
            sub.folders.append(_to_folder(pkg, cls))
        else:
            raise EbRimError(
                f"RegistryPackage {pkg.id} is classified neither as SubmissionSet nor as Folder"
            )
    return sub


def parse_registry_object(data: bytes) -> RegistryObject:
    """One stored ebRIM element (as written by :func:`to_element`) -> model object."""
    el = etree.fromstring(data)
    if el.tag == R + "ExtrinsicObject":
        return parse_document_entry(el)
    if el.tag == R + "Association":
        return parse_association(el)
    rol = etree.Element(R + "RegistryObjectList")
    rol.append(el)
    sub = parse_registry_object_list(rol)
    return (sub.submission_sets or sub.folders)[0]


# ======================================================================= writing

_SubElement = etree.SubElement
_SLOT, _VALUE_LIST, _VALUE = R + "Slot", R + "ValueList", R + "Value"
_LOCALIZED_STRING = R + "LocalizedString"


def _sub(parent: etree._Element, local: str, **attrs: str | None) -> etree._Element:
    return _SubElement(parent, R + local, {k: v for k, v in attrs.items() if v is not None})


def _write_localized(parent: etree._Element, local: str, strings: list[LocalizedString]) -> None:
    if not strings:
        return
    holder = _SubElement(parent, R + local)
    for ls in strings:
        attrs = {"value": ls.value} if ls.charset is None else {"charset": ls.charset,
                                                                "value": ls.value}
        if ls.lang:
            attrs[XML_LANG] = ls.lang
        _SubElement(holder, _LOCALIZED_STRING, attrs)


def _write_slot(parent: etree._Element, name: str, values: list[str], slot_type: str | None = None):
    slot = _SubElement(parent, _SLOT, {"name": name} if slot_type is None
                       else {"name": name, "slotType": slot_type})
    vl = _SubElement(slot, _VALUE_LIST)
    for v in values:
        _SubElement(vl, _VALUE).text = v


def _write_slots(parent: etree._Element, slots: list[Slot]) -> None:
    for s in slots:
        _write_slot(parent, s.name, s.values, s.slot_type)


def _write_classification(parent: etree._Element, c: Classification) -> None:
    el = _sub(parent, "Classification", id=c.id, objectType=V.OT_CLASSIFICATION,
              classificationScheme=c.scheme, classificationNode=c.classification_node,
              classifiedObject=c.classified_object, nodeRepresentation=c.node_representation)
    _write_slots(el, c.slots)
    _write_localized(el, "Name", c.name)
    _write_localized(el, "Description", c.description)


def _write_code(parent: etree._Element, owner: str, scheme: str, code: Code) -> None:
    _write_classification(parent, Classification(
        id=code.id or new_uuid(), classified_object=owner, scheme=scheme,
        node_representation=code.code, name=code.display,
        slots=[Slot("codingScheme", [code.scheme])],
    ))


def _write_author(parent: etree._Element, owner: str, scheme: str, a: Author) -> None:
    slots = []
    if a.person:
        slots.append(Slot("authorPerson", [a.person]))
    for name, values in (("authorInstitution", a.institutions), ("authorRole", a.roles),
                         ("authorSpecialty", a.specialties),
                         ("authorTelecommunication", a.telecoms)):
        if values:
            slots.append(Slot(name, values))
    _write_classification(parent, Classification(
        id=a.id or new_uuid(), classified_object=owner, scheme=scheme, node_representation="",
        slots=slots + a.extra_slots))


def _write_ext_id(parent, owner: RegistryObject, key: str, scheme: str, value: str | None,
                  name: str) -> None:
    if value is None:
        return
    el = _sub(parent, "ExternalIdentifier",
              id=owner.external_identifier_ids.get(key) or new_uuid(),
              objectType=V.OT_EXTERNAL_IDENTIFIER, registryObject=owner.id,
              identificationScheme=scheme, value=value)
    _write_localized(el, "Name", [LocalizedString(name)])


def _write_extra_ext_ids(parent, obj: RegistryObject) -> None:
    for ei in obj.extra_external_identifiers:
        el = _sub(parent, "ExternalIdentifier", id=ei.id, objectType=V.OT_EXTERNAL_IDENTIFIER,
                  registryObject=obj.id, identificationScheme=ei.scheme, value=ei.value)
        _write_localized(el, "Name", ei.name)


def _open(obj: RegistryObject, local: str, **attrs: str | None) -> etree._Element:
    return etree.Element(R + local, {k: v for k, v in (
        ("id", obj.id), *attrs.items(), ("status", obj.status), ("lid", obj.lid),
        ("home", obj.home)) if v is not None}, nsmap=NSMAP)


def _write_name_desc_version(el: etree._Element, obj: RegistryObject) -> None:
    _write_localized(el, "Name", obj.title)
    _write_localized(el, "Description", obj.comments)
    if obj.version is not None:
        _sub(el, "VersionInfo", versionName=obj.version)


def _write_limited(el: etree._Element, owner: str, cid: str | None, scheme: str) -> None:
    if cid:
        _write_classification(el, Classification(id=cid, classified_object=owner,
                                                 classification_node=scheme))


def document_entry_element(de: DocumentEntry) -> etree._Element:
    """DocumentEntry -> rim:ExtrinsicObject, in ebRIM schema order."""
    el = _open(de, "ExtrinsicObject", mimeType=de.mime_type, objectType=de.object_type,
               isOpaque=de.is_opaque)
    for name, attr in _DE_SINGLE_SLOTS.items():
        value = getattr(de, attr)
        if value is not None:
            _write_slot(el, name, [value])
    for name, attr in _DE_MULTI_SLOTS.items():
        values = getattr(de, attr)
        if values:
            _write_slot(el, name, values)
    _write_slots(el, de.extra_slots)
    _write_name_desc_version(el, de)
    for a in de.authors:
        _write_author(el, de.id, V.DE_AUTHOR, a)
    for scheme, attr in _DE_CODES.items():
        code = getattr(de, attr)
        if code is not None:
            _write_code(el, de.id, scheme, code)
    for scheme, attr in _DE_CODE_LISTS.items():
        for code in getattr(de, attr):
            _write_code(el, de.id, scheme, code)
    _write_limited(el, de.id, de.limited_metadata, V.DE_LIMITED_METADATA)
    for c in de.extra_classifications:
        _write_classification(el, c)
    _write_ext_id(el, de, "patientId", V.DE_PATIENT_ID, de.patient_id, "XDSDocumentEntry.patientId")
    _write_ext_id(el, de, "uniqueId", V.DE_UNIQUE_ID, de.unique_id, "XDSDocumentEntry.uniqueId")
    _write_extra_ext_ids(el, de)
    if de.content_version is not None:
        _sub(el, "ContentVersionInfo", versionName=de.content_version)
    return el


def submission_set_element(ss: SubmissionSet) -> etree._Element:
    """SubmissionSet -> rim:RegistryPackage with its classification (ITI TF-3 §4.2.3.3)."""
    el = _open(ss, "RegistryPackage", objectType=V.OT_REGISTRY_PACKAGE)
    if ss.submission_time is not None:
        _write_slot(el, "submissionTime", [ss.submission_time])
    if ss.intended_recipients:
        _write_slot(el, "intendedRecipient", ss.intended_recipients)
    _write_slots(el, ss.extra_slots)
    _write_name_desc_version(el, ss)
    for a in ss.authors:
        _write_author(el, ss.id, V.SS_AUTHOR, a)
    if ss.content_type_code is not None:
        _write_code(el, ss.id, V.SS_CONTENT_TYPE_CODE, ss.content_type_code)
    _write_classification(el, Classification(
        id=ss.node_classification_id or new_uuid(), classified_object=ss.id,
        classification_node=V.SUBMISSION_SET_NODE))
    _write_limited(el, ss.id, ss.limited_metadata, V.SS_LIMITED_METADATA)
    for c in ss.extra_classifications:
        _write_classification(el, c)
    _write_ext_id(el, ss, "uniqueId", V.SS_UNIQUE_ID, ss.unique_id, "XDSSubmissionSet.uniqueId")
    _write_ext_id(el, ss, "sourceId", V.SS_SOURCE_ID, ss.source_id, "XDSSubmissionSet.sourceId")
    _write_ext_id(el, ss, "patientId", V.SS_PATIENT_ID, ss.patient_id, "XDSSubmissionSet.patientId")
    _write_extra_ext_ids(el, ss)
    return el


def folder_element(fol: Folder) -> etree._Element:
    """Folder -> rim:RegistryPackage with its classification (ITI TF-3 §4.2.3.4)."""
    el = _open(fol, "RegistryPackage", objectType=V.OT_REGISTRY_PACKAGE)
    if fol.last_update_time is not None:
        _write_slot(el, "lastUpdateTime", [fol.last_update_time])
    _write_slots(el, fol.extra_slots)
    _write_name_desc_version(el, fol)
    for code in fol.codes:
        _write_code(el, fol.id, V.FOL_CODE_LIST, code)
    _write_classification(el, Classification(
        id=fol.node_classification_id or new_uuid(), classified_object=fol.id,
        classification_node=V.FOLDER_NODE))
    _write_limited(el, fol.id, fol.limited_metadata, V.FOL_LIMITED_METADATA)
    for c in fol.extra_classifications:
        _write_classification(el, c)
    _write_ext_id(el, fol, "patientId", V.FOL_PATIENT_ID, fol.patient_id, "XDSFolder.patientId")
    _write_ext_id(el, fol, "uniqueId", V.FOL_UNIQUE_ID, fol.unique_id, "XDSFolder.uniqueId")
    _write_extra_ext_ids(el, fol)
    return el


def association_element(a: Association) -> etree._Element:
    el = _open(a, "Association", associationType=a.type, sourceObject=a.source,
               targetObject=a.target, objectType=V.OT_ASSOCIATION)
    _write_slots(el, a.extra_slots)
    _write_name_desc_version(el, a)
    for c in a.extra_classifications:
        _write_classification(el, c)
    _write_extra_ext_ids(el, a)
    return el


_WRITERS: dict[type, Callable[..., etree._Element]] = {
    DocumentEntry: document_entry_element,
    SubmissionSet: submission_set_element,
    Folder: folder_element,
    Association: association_element,
}


def to_element(obj: RegistryObject) -> etree._Element:
    """Any model object -> its ebRIM 3.0 element."""
    return _WRITERS[type(obj)](obj)


def object_ref_element(obj_id: str, home: str | None = None) -> etree._Element:
    el = etree.Element(R + "ObjectRef", nsmap=NSMAP)
    el.set("id", obj_id)
    if home:
        el.set("home", home)
    return el


def submission_to_registry_object_list(sub: Submission) -> etree._Element:
    """Submission -> rim:RegistryObjectList (used by sources: push, testkit, repository)."""
    rol = etree.Element(R + "RegistryObjectList", nsmap=NSMAP)
    for obj in sub.objects():
        rol.append(to_element(obj))
    for c in sub.classifications:
        _write_classification(rol, c)
    for ref in sub.object_refs:
        rol.append(object_ref_element(ref.id, ref.home))
    return rol


def submit_objects_request(sub: Submission) -> etree._Element:
    """Submission -> lcm:SubmitObjectsRequest (the ITI-42 body; ITI-41 carries it too)."""
    req = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM})
    req.append(submission_to_registry_object_list(sub))
    return req
