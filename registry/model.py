"""The XDS metadata domain model (ITI TF-3 §4.1-4.2), separate from its ebRIM wire form.

Plain dataclasses: :class:`DocumentEntry` (stable and on-demand), :class:`SubmissionSet`,
:class:`Folder`, :class:`Association`, :class:`Author`, :class:`Code`. Whatever the model
does not know (slots, classifications, external identifiers) is carried in ``extra_*``
so that a LeafClass answer returns everything that was submitted.
:mod:`registry.ebrim` transforms this model to and from ebRIM 3.0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import vocabulary as V


@dataclass(slots=True)
class LocalizedString:
    """ebRIM LocalizedString (value with optional xml:lang and charset)."""

    value: str
    lang: str | None = None
    charset: str | None = None


@dataclass(slots=True)
class Slot:
    """ebRIM Slot: a named list of string values."""

    name: str
    values: list[str]
    slot_type: str | None = None


@dataclass(slots=True)
class Classification:
    """ebRIM Classification the model does not interpret (kept verbatim)."""

    id: str
    classified_object: str
    scheme: str | None = None
    node_representation: str | None = None
    classification_node: str | None = None
    name: list[LocalizedString] = field(default_factory=list)
    description: list[LocalizedString] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)


@dataclass(slots=True)
class ExternalIdentifier:
    """ebRIM ExternalIdentifier the model does not interpret (kept verbatim)."""

    id: str
    registry_object: str
    scheme: str
    value: str
    name: list[LocalizedString] = field(default_factory=list)


@dataclass(slots=True)
class Code:
    """A coded value: Classification nodeRepresentation + codingScheme slot + Name
    (ITI TF-3 §4.2.3.1.2)."""

    code: str
    scheme: str
    display: list[LocalizedString] = field(default_factory=list)
    #: the Classification's id (kept so a LeafClass answer returns the submitted id).
    id: str | None = None

    @property
    def key(self) -> str:
        """``code^^scheme``: the form ITI-18 code parameters use (ITI TF-2a §3.18.4.1.2.3.7)."""
        return f"{self.code}^^{self.scheme}"


@dataclass(slots=True)
class Author:
    """Author classification (ITI TF-3 §4.2.3.1.4): person (XCN), institutions (XON),
    roles, specialties, telecommunications (XTN)."""

    person: str | None = None
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)
    id: str | None = None
    extra_slots: list[Slot] = field(default_factory=list)


@dataclass(slots=True)
class RegistryObject:
    """What every XDS object carries: ids, status, Name/Description and the unknown extras."""

    id: str
    status: str | None = None
    lid: str | None = None
    version: str | None = None
    home: str | None = None
    title: list[LocalizedString] = field(default_factory=list)
    comments: list[LocalizedString] = field(default_factory=list)
    extra_slots: list[Slot] = field(default_factory=list)
    extra_classifications: list[Classification] = field(default_factory=list)
    extra_external_identifiers: list[ExternalIdentifier] = field(default_factory=list)
    #: ids of the standard ExternalIdentifiers (patientId, uniqueId, sourceId) as submitted.
    external_identifier_ids: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DocumentEntry(RegistryObject):
    """XDSDocumentEntry (ITI TF-3 §4.2.3.2, Table 4.2.3.2-1); ebRIM ExtrinsicObject."""

    object_type: str = V.STABLE_DOCUMENT
    mime_type: str | None = None
    unique_id: str | None = None
    patient_id: str | None = None
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    healthcare_facility_type_code: Code | None = None
    practice_setting_code: Code | None = None
    confidentiality_codes: list[Code] = field(default_factory=list)
    event_codes: list[Code] = field(default_factory=list)
    authors: list[Author] = field(default_factory=list)
    creation_time: str | None = None
    service_start_time: str | None = None
    service_stop_time: str | None = None
    hash: str | None = None
    size: str | None = None
    language_code: str | None = None
    legal_authenticator: str | None = None
    repository_unique_id: str | None = None
    source_patient_id: str | None = None
    source_patient_info: list[str] = field(default_factory=list)
    uri: list[str] = field(default_factory=list)
    reference_ids: list[str] = field(default_factory=list)
    document_availability: str | None = None
    limited_metadata: str | None = None
    content_version: str | None = None
    is_opaque: str | None = None

    @property
    def on_demand(self) -> bool:
        return self.object_type == V.ON_DEMAND_DOCUMENT


@dataclass(slots=True)
class SubmissionSet(RegistryObject):
    """XDSSubmissionSet (ITI TF-3 §4.2.3.3); ebRIM RegistryPackage classified as such."""

    unique_id: str | None = None
    source_id: str | None = None
    patient_id: str | None = None
    submission_time: str | None = None
    content_type_code: Code | None = None
    authors: list[Author] = field(default_factory=list)
    intended_recipients: list[str] = field(default_factory=list)
    limited_metadata: str | None = None
    #: id of the Classification that marks the package as a submission set.
    node_classification_id: str | None = None


@dataclass(slots=True)
class Folder(RegistryObject):
    """XDSFolder (ITI TF-3 §4.2.3.4); ebRIM RegistryPackage classified as such."""

    unique_id: str | None = None
    patient_id: str | None = None
    codes: list[Code] = field(default_factory=list)
    last_update_time: str | None = None
    limited_metadata: str | None = None
    node_classification_id: str | None = None


@dataclass(slots=True)
class Association(RegistryObject):
    """ebRIM Association (ITI TF-3 §4.2.2): HasMember, RPLC, APND, XFRM, XFRM_RPLC, signs..."""

    type: str = V.HAS_MEMBER
    source: str = ""
    target: str = ""

    def slot(self, name: str) -> list[str] | None:
        for s in self.extra_slots:
            if s.name == name:
                return s.values
        return None

    @property
    def submission_set_status(self) -> str | None:
        """``Original`` or ``Reference`` on SubmissionSet HasMember associations."""
        values = self.slot("SubmissionSetStatus")
        return values[0] if values else None


@dataclass(slots=True)
class ObjectRef:
    """rim:ObjectRef: a reference to an object already in the registry."""

    id: str
    home: str | None = None


@dataclass
class Submission:
    """The content of one SubmitObjectsRequest (ITI-42) or ProvideAndRegister (ITI-41)."""

    submission_sets: list[SubmissionSet] = field(default_factory=list)
    documents: list[DocumentEntry] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    object_refs: list[ObjectRef] = field(default_factory=list)
    #: top-level Classifications that classify nothing the model understood.
    classifications: list[Classification] = field(default_factory=list)

    @property
    def submission_set(self) -> SubmissionSet | None:
        return self.submission_sets[0] if self.submission_sets else None

    def objects(self) -> list[RegistryObject]:
        return [*self.submission_sets, *self.documents, *self.folders, *self.associations]
