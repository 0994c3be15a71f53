"""IHE error codes and the ebRS RegistryResponse / RegistryErrorList (ITI TF-3 §4.2.4).

One table lists every code OpenDMP answers with (ITI TF-3 Table 4.2.4.1-2 plus the
ebRS 3.0 codes). Validators raise :class:`XdsError`; a transaction collects them into
:class:`XdsErrors` and :func:`registry_response` renders the RegistryResponse.
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from soapstack.namespaces import RS

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"

# ITI TF-3 Table 4.2.4.1-2 (the codes a Document Registry returns).
REGISTRY_METADATA_ERROR = "XDSRegistryMetadataError"
REGISTRY_ERROR = "XDSRegistryError"
REGISTRY_BUSY = "XDSRegistryBusy"
REGISTRY_OUT_OF_RESOURCES = "XDSRegistryOutOfResources"
REGISTRY_DUPLICATE_UNIQUE_ID_IN_MESSAGE = "XDSRegistryDuplicateUniqueIdInMessage"
DUPLICATE_UNIQUE_ID_IN_REGISTRY = "XDSDuplicateUniqueIdInRegistry"
NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
PATIENT_ID_DOES_NOT_MATCH = "XDSPatientIdDoesNotMatch"
UNKNOWN_PATIENT_ID = "XDSUnknownPatientId"
UNKNOWN_STORED_QUERY = "XDSUnknownStoredQuery"
STORED_QUERY_MISSING_PARAM = "XDSStoredQueryMissingParam"
STORED_QUERY_PARAM_NUMBER = "XDSStoredQueryParamNumber"
TOO_MANY_RESULTS = "XDSTooManyResults"
RESULT_NOT_SINGLE_PATIENT = "XDSResultNotSinglePatient"
EXTRA_METADATA_NOT_SAVED = "XDSExtraMetadataNotSaved"
UNKNOWN_COMMUNITY = "XDSUnknownCommunity"
DEPRECATED_DOCUMENT = "XDSRegistryDeprecatedDocumentError"
#: ebRS 3.0 §6.9.1 (no XDS-prefixed variant exists in ITI TF-3; NIST expects this one).
UNRESOLVED_REFERENCE = "UnresolvedReferenceException"
REFERENCES_EXIST = "ReferencesExistException"
UNREFERENCED_OBJECT = "XDSUnreferencedObjectException"
INVALID_REQUEST = "InvalidRequestException"


@dataclass
class XdsError(Exception):
    """One RegistryError: IHE code, readable message, location, severity."""

    code: str
    message: str
    location: str | None = None
    severity: str = SEVERITY_ERROR

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class XdsErrors(Exception):
    """A transaction's failure: one or more RegistryErrors."""

    def __init__(self, errors: list[XdsError]) -> None:
        super().__init__("; ".join(map(str, errors)))
        self.errors = errors


def error_list_xml(errors: list[XdsError]) -> str:
    """rs:RegistryErrorList (ebRS 3.0 §2.1.6)."""
    if not errors:
        return ""
    items = []
    for e in errors:
        location = f" location={quoteattr(e.location)}" if e.location else ""
        items.append(
            f"<rs:RegistryError errorCode={quoteattr(e.code)} "
            f"codeContext={quoteattr(e.message)} severity={quoteattr(e.severity)}{location}/>"
        )
    return "<rs:RegistryErrorList>" + "".join(items) + "</rs:RegistryErrorList>"


def response_status(errors: list[XdsError]) -> str:
    return FAILURE if any(e.severity == SEVERITY_ERROR for e in errors) else SUCCESS


def registry_response(errors: list[XdsError] | None = None, status: str | None = None) -> bytes:
    """rs:RegistryResponse with status derived from the errors unless given."""
    errors = errors or []
    status = status or response_status(errors)
    return (
        f'<rs:RegistryResponse xmlns:rs="{RS}" status="{status}">'
        + error_list_xml(errors)
        + "</rs:RegistryResponse>"
    ).encode()
