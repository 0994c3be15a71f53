"""The Document Registry's SOAP binding: ITI-42 and ITI-18 on ``POST /xds/registry``.

Actions and Body elements from ITI TF-2b §3.42.5 and ITI TF-2a §3.18.5 (the official
``XDS.b_DocumentRegistry.wsdl`` served at ``?wsdl``).
"""
from __future__ import annotations

from sqlalchemy import Engine

from opendmp.config import ROOT
from opendmp.db import read_transaction
from soapstack.envelope import SoapRequest, SoapResponse
from soapstack.namespaces import LCM, QUERY, qn
from soapstack.wsgi import Operation, SoapEndpoint

from .affinity import AffinityDomain
from .iti18 import registry_stored_query
from .iti42 import register_document_set

ITI42_ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI42_RESPONSE_ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-bResponse"
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI18_RESPONSE_ACTION = "urn:ihe:iti:2007:RegistryStoredQueryResponse"

WSDL = ROOT / "wsdl" / "XDS.b_DocumentRegistry.wsdl"


def registry_endpoint(engine: Engine, domain: AffinityDomain,
                      path: str = "/xds/registry") -> SoapEndpoint:
    """The registry endpoint with its two operations."""

    def iti42(request: SoapRequest) -> SoapResponse:
        return SoapResponse(ITI42_RESPONSE_ACTION,
                            register_document_set(engine, domain, request.payload))

    def iti18(request: SoapRequest) -> SoapResponse:
        with read_transaction(engine) as conn:
            body = registry_stored_query(conn, request.payload, domain, request.identity)
        return SoapResponse(ITI18_RESPONSE_ACTION, body)

    return SoapEndpoint(path, [
        Operation(ITI42_ACTION, qn(LCM, "SubmitObjectsRequest"), iti42),
        Operation(ITI18_ACTION, qn(QUERY, "AdhocQueryRequest"), iti18),
    ], wsdl=WSDL)
