"""ITI-18 request reading: the AdhocQueryRequest envelope and stored-query parameters.

ITI TF-2a §3.18.4.1.2.3.5 (value syntax): a string is quoted (``'x'``, a quote inside
doubled as ``''``), a number is bare, a list of values is ``('a','b',3)``. A Slot's
ValueList may hold several Values; all the values of one Slot are OR'ed
(§3.18.4.1.2.3.7: ``('a','b')`` in one Value is the same as ``('a')`` and ``('b')`` in
two). A parameter with AND/OR semantics (the event-code, confidentiality-code,
folder-code and referenceId lists) may repeat as several Slots of the same name, which
are AND'ed. Any other parameter given twice is XDSStoredQueryParamNumber, as is a
single-valued parameter given a list of several values.

Everything here is pure (element in, :class:`AdhocQuery` / :class:`QueryParams` out or
:class:`~registry.errors.XdsError` raised); the SQL lives in :mod:`registry.iti18.queries`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from registry import errors as E
from registry import vocabulary as V
from registry.store import STATUS_CODES, Kind, dtm_key
from soapstack.namespaces import QUERY, RIM

_Q = "{%s}" % QUERY
_R = "{%s}" % RIM

LEAF_CLASS = "LeafClass"
OBJECT_REF = "ObjectRef"
RETURN_TYPES = (LEAF_CLASS, OBJECT_REF)

#: $XDSDocumentEntryType values (ITI TF-2a §3.18.4.1.2.3.6.2) -> registry_object.kind
DOCUMENT_ENTRY_TYPES = {V.STABLE_DOCUMENT: Kind.STABLE_DOCUMENT,
                        V.ON_DEMAND_DOCUMENT: Kind.ON_DEMAND_DOCUMENT}


# ======================================================================= the envelope

@dataclass
class AdhocQuery:
    """What an AdhocQueryRequest asks: the stored query, its return type and its Slots."""

    query_id: str
    return_type: str
    home: str | None
    #: (slot name, [Value texts]) in document order.
    slots: list[tuple[str, list[str]]] = field(default_factory=list)


def read_request(request: etree._Element) -> AdhocQuery:
    """query:AdhocQueryRequest -> AdhocQuery (ITI TF-2a §3.18.4.1.2); XdsError if malformed."""
    if not isinstance(request.tag, str) or request.tag != _Q + "AdhocQueryRequest":
        raise E.XdsError(E.REGISTRY_ERROR,
                         f"expected query:AdhocQueryRequest, got {_name(request)}")
    option = request.find(_Q + "ResponseOption")
    if option is None:
        raise E.XdsError(E.REGISTRY_ERROR, "AdhocQueryRequest has no ResponseOption")
    # ebRS 3.0 query.xsd: returnType defaults to RegistryObject, which XDS does not allow.
    return_type = (option.get("returnType") or "RegistryObject").strip()
    if return_type not in RETURN_TYPES:
        raise E.XdsError(E.REGISTRY_ERROR,
                         f"ResponseOption/@returnType {return_type!r} is not supported: "
                         "ITI-18 allows LeafClass or ObjectRef (ITI TF-2a 3.18.4.1.2.1)")
    query = request.find(_R + "AdhocQuery")
    if query is None:
        raise E.XdsError(E.REGISTRY_ERROR, "AdhocQueryRequest has no rim:AdhocQuery")
    query_id = (query.get("id") or "").strip()
    if not query_id:
        raise E.XdsError(E.UNKNOWN_STORED_QUERY, "rim:AdhocQuery has no id")
    home = query.get("home")
    slots = []
    for slot in query.iterchildren(_R + "Slot"):
        name = (slot.get("name") or "").strip()
        values = [v.text or "" for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
        slots.append((name, values))
    return AdhocQuery(query_id, return_type, home.strip() if home else None, slots)


def _name(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else repr(el.tag)


# ======================================================================= value syntax

class ValueSyntaxError(ValueError):
    pass


def parse_value(text: str) -> list[str]:
    """One rim:Value -> its values: ``'x'`` -> [x]; ``('a', 'b', 3)`` -> [a, b, 3];
    a bare token (number, or an unquoted string as some clients send) -> [token].
    An empty Value has no value. Raises ValueSyntaxError."""
    s = text.strip()
    if not s:
        return []
    if s[0] == "(":
        if s[-1] != ")":
            raise ValueSyntaxError(f"list {s!r} does not end with ')'")
        body = s[1:-1]
        items: list[str] = []
        pos = _skip_ws(body, 0)
        if pos == len(body):
            return []
        while True:
            item, pos = _token(body, pos, in_list=True)
            items.append(item)
            pos = _skip_ws(body, pos)
            if pos == len(body):
                return items
            if body[pos] != ",":
                raise ValueSyntaxError(f"expected ',' at {body[pos:]!r} in {s!r}")
            pos = _skip_ws(body, pos + 1)
    item, pos = _token(s, 0, in_list=False)
    if _skip_ws(s, pos) != len(s):
        raise ValueSyntaxError(f"unexpected text {s[pos:]!r} after the value in {s!r}")
    return [item]


def _skip_ws(s: str, pos: int) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos


def _token(s: str, pos: int, *, in_list: bool) -> tuple[str, int]:
    if pos < len(s) and s[pos] == "'":
        out = []
        pos += 1
        while True:
            end = s.find("'", pos)
            if end < 0:
                raise ValueSyntaxError(f"unterminated quoted string in {s!r}")
            out.append(s[pos:end])
            if end + 1 < len(s) and s[end + 1] == "'":  # '' is an escaped quote
                out.append("'")
                pos = end + 2
                continue
            return "".join(out), end + 1
    end = pos
    stops = ",)" if in_list else ""
    while end < len(s) and s[end] not in stops and not (in_list and s[end].isspace()):
        end += 1
    token = s[pos:end].strip()
    if not token or "'" in token or "(" in token:
        raise ValueSyntaxError(f"malformed value at {s[pos:]!r}")
    return token, end


# ======================================================================= parameters

@dataclass(frozen=True)
class Param:
    """A stored-query parameter (ITI TF-2a §3.18.4.1.2.3.7.x tables)."""

    name: str
    required: bool = False
    #: accepts several values (OR'ed).
    multiple: bool = False
    #: may repeat as several Slots, AND'ed (§3.18.4.1.2.3.7 AND/OR semantics).
    and_or: bool = False


def P(name: str, required: bool = False, multiple: bool = False, and_or: bool = False) -> Param:
    return Param(name, required, multiple or and_or, and_or)


# Parameter names (ITI TF-2a §3.18.4.1.2.3.7; MU option: LogicalID, MetadataLevel,
# XDSAssociationStatus). Each checked against the NIST XDS Toolkit query files and IPF.
DE_PATIENT_ID = "$XDSDocumentEntryPatientId"
DE_CLASS_CODE = "$XDSDocumentEntryClassCode"
DE_TYPE_CODE = "$XDSDocumentEntryTypeCode"
DE_PRACTICE_SETTING_CODE = "$XDSDocumentEntryPracticeSettingCode"
DE_CREATION_FROM = "$XDSDocumentEntryCreationTimeFrom"
DE_CREATION_TO = "$XDSDocumentEntryCreationTimeTo"
DE_SERVICE_START_FROM = "$XDSDocumentEntryServiceStartTimeFrom"
DE_SERVICE_START_TO = "$XDSDocumentEntryServiceStartTimeTo"
DE_SERVICE_STOP_FROM = "$XDSDocumentEntryServiceStopTimeFrom"
DE_SERVICE_STOP_TO = "$XDSDocumentEntryServiceStopTimeTo"
DE_FACILITY_TYPE_CODE = "$XDSDocumentEntryHealthcareFacilityTypeCode"
DE_EVENT_CODE = "$XDSDocumentEntryEventCodeList"
DE_CONFIDENTIALITY_CODE = "$XDSDocumentEntryConfidentialityCode"
DE_AUTHOR_PERSON = "$XDSDocumentEntryAuthorPerson"
DE_FORMAT_CODE = "$XDSDocumentEntryFormatCode"
DE_STATUS = "$XDSDocumentEntryStatus"
DE_TYPE = "$XDSDocumentEntryType"
DE_REFERENCE_IDS = "$XDSDocumentEntryReferenceIdList"
DE_UUID = "$XDSDocumentEntryEntryUUID"
DE_UNIQUE_ID = "$XDSDocumentEntryUniqueId"
DE_LOGICAL_ID = "$XDSDocumentEntryLogicalID"
SS_PATIENT_ID = "$XDSSubmissionSetPatientId"
SS_SOURCE_ID = "$XDSSubmissionSetSourceId"
SS_SUBMISSION_FROM = "$XDSSubmissionSetSubmissionTimeFrom"
SS_SUBMISSION_TO = "$XDSSubmissionSetSubmissionTimeTo"
SS_AUTHOR_PERSON = "$XDSSubmissionSetAuthorPerson"
SS_CONTENT_TYPE = "$XDSSubmissionSetContentType"
SS_STATUS = "$XDSSubmissionSetStatus"
SS_UUID = "$XDSSubmissionSetEntryUUID"
SS_UNIQUE_ID = "$XDSSubmissionSetUniqueId"
FOL_PATIENT_ID = "$XDSFolderPatientId"
FOL_LAST_UPDATE_FROM = "$XDSFolderLastUpdateTimeFrom"
FOL_LAST_UPDATE_TO = "$XDSFolderLastUpdateTimeTo"
FOL_CODE_LIST = "$XDSFolderCodeList"
FOL_STATUS = "$XDSFolderStatus"
FOL_UUID = "$XDSFolderEntryUUID"
FOL_UNIQUE_ID = "$XDSFolderUniqueId"
FOL_LOGICAL_ID = "$XDSFolderLogicalID"
PATIENT_ID = "$patientId"
UUID = "$uuid"
HOME_COMMUNITY_ID = "$homeCommunityId"
ASSOCIATION_TYPES = "$AssociationTypes"
ASSOCIATION_STATUS = "$XDSAssociationStatus"
METADATA_LEVEL = "$MetadataLevel"


@dataclass
class QueryParams:
    """The bound parameters of one stored query: ``{name: [[values of a Slot], ...]}``."""

    groups: dict[str, list[list[str]]]
    warnings: list[E.XdsError] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return bool(self.groups.get(name))

    def values(self, name: str) -> list[str]:
        """The OR'ed values of a parameter (empty when absent)."""
        groups = self.groups.get(name)
        return list(groups[0]) if groups else []

    def and_groups(self, name: str) -> list[list[str]]:
        """AND/OR parameters: one OR'ed list per Slot."""
        return [list(g) for g in self.groups.get(name, [])]

    def single(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def time(self, name: str) -> int | None:
        """A DTM bound as its 14-digit padded integer (store.dtm_key)."""
        value = self.single(name)
        if value is None:
            return None
        key = dtm_key(value)
        if key is None:
            raise E.XdsError(E.REGISTRY_ERROR,
                             f"{name}: {value!r} is not an HL7 DTM (YYYY[MM[DD[hh[mm[ss]]]]])")
        return key

    def statuses(self, name: str) -> list[int]:
        """Availability statuses as registry_object.status codes; unknown ones are
        reported as warnings and match nothing."""
        codes = []
        for value in self.values(name):
            code = STATUS_CODES.get(value)
            if code is None:
                self.warn(f"{name}: unknown availability status {value!r} matches nothing")
            else:
                codes.append(code)
        return codes

    def document_kinds(self) -> list[int]:
        """$XDSDocumentEntryType -> kinds; Stable only when absent (ITI TF-2a 3.18.4.1.2.3.6.2)."""
        if not self.has(DE_TYPE):
            return [Kind.STABLE_DOCUMENT]
        kinds = []
        for value in self.values(DE_TYPE):
            kind = DOCUMENT_ENTRY_TYPES.get(value)
            if kind is None:
                self.warn(f"{DE_TYPE}: unknown DocumentEntry type {value!r} matches nothing")
            elif kind not in kinds:
                kinds.append(kind)
        return kinds

    def warn(self, message: str) -> None:
        self.warnings.append(E.XdsError(E.REGISTRY_ERROR, message,
                                        severity=E.SEVERITY_WARNING))


def bind(params: tuple[Param, ...], slots: list[tuple[str, list[str]]],
         one_of: tuple[str, ...] = ()) -> QueryParams:
    """Check the Slots of a request against a query's parameter table.

    Raises XdsErrors with every problem found: XDSStoredQueryMissingParam (a required
    parameter, or none of ``one_of``), XDSStoredQueryParamNumber (a repeated Slot that
    has no AND/OR semantics, several values for a single-valued parameter, more than one
    of ``one_of``), XDSRegistryError (value syntax). Unknown parameters are ignored
    with a warning.
    """
    table = {p.name: p for p in params}
    groups: dict[str, list[list[str]]] = {}
    errors: list[E.XdsError] = []
    errored: set[str] = set()
    result = QueryParams(groups)
    for name, texts in slots:
        spec = table.get(name)
        if spec is None:
            result.warn(f"parameter {name} is not a parameter of this stored query; ignored")
            continue
        values: list[str] = []
        try:
            for text in texts:
                values.extend(parse_value(text))
        except ValueSyntaxError as exc:
            errors.append(E.XdsError(E.REGISTRY_ERROR, f"{name}: {exc}"))
            errored.add(name)
            continue
        if not values:
            continue
        if name in groups and not spec.and_or:
            errors.append(E.XdsError(E.STORED_QUERY_PARAM_NUMBER,
                                     f"parameter {name} is given more than once"))
            errored.add(name)
            continue
        if not spec.multiple and len(values) > 1:
            errors.append(E.XdsError(E.STORED_QUERY_PARAM_NUMBER,
                                     f"parameter {name} takes a single value, got {len(values)}"))
            errored.add(name)
            continue
        groups.setdefault(name, []).append(values)
    for p in params:
        if p.required and p.name not in groups and p.name not in errored:
            errors.append(E.XdsError(E.STORED_QUERY_MISSING_PARAM,
                                     f"required parameter {p.name} is missing"))
    if one_of:
        given = [n for n in one_of if n in groups or n in errored]
        if not given:
            errors.append(E.XdsError(E.STORED_QUERY_MISSING_PARAM,
                                     f"one of {', '.join(one_of)} is required"))
        elif len(given) > 1:
            errors.append(E.XdsError(E.STORED_QUERY_PARAM_NUMBER,
                                     f"only one of {', '.join(given)} may be given"))
    if errors:
        raise E.XdsErrors(errors)
    return result
