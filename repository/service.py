"""The Document Repository's SOAP binding: ITI-41 and ITI-43 on ``POST /xds/repository``.

Actions and Body elements from ITI TF-2b §3.41.5 and §3.43.5 (the official
``XDS.b_DocumentRepository.wsdl`` served at ``?wsdl``).
"""
from __future__ import annotations

from opendmp.config import ROOT
from soapstack.envelope import SoapRequest, SoapResponse
from soapstack.namespaces import XDSB, qn
from soapstack.wsgi import Operation, SoapEndpoint

from .actor import Repository
from .iti41 import provide_and_register
from .iti43 import retrieve_document_set

ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI41_RESPONSE_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
ITI43_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"

WSDL = ROOT / "wsdl" / "XDS.b_DocumentRepository.wsdl"


def repository_endpoint(repo: Repository, home_community_id: str | None,
                        path: str = "/xds/repository") -> SoapEndpoint:
    def iti41(request: SoapRequest) -> SoapResponse:
        return SoapResponse(ITI41_RESPONSE_ACTION,
                            provide_and_register(repo, request.payload, request.attachments))

    def iti43(request: SoapRequest) -> SoapResponse:
        return retrieve_document_set(repo, request.payload, home_community_id, request.identity)

    return SoapEndpoint(path, [
        Operation(ITI41_ACTION, qn(XDSB, "ProvideAndRegisterDocumentSetRequest"), iti41,
                  streams_attachments=True),
        Operation(ITI43_ACTION, qn(XDSB, "RetrieveDocumentSetRequest"), iti43),
    ], wsdl=WSDL)
