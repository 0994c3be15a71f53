"""Test-side helpers to talk to the real server: raw SOAP posts and ebRIM readers."""
from __future__ import annotations

import uuid

import httpx
from lxml import etree

from soapstack.client import SoapClient
from soapstack.namespaces import QUERY, RIM, RS, SOAP12, WSA

ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
NS = {"rs": RS, "rim": RIM, "query": QUERY, "env": SOAP12, "wsa": WSA}


def registry(server) -> SoapClient:
    return SoapClient(server.url("/xds/registry"))


def error_codes(response: etree._Element) -> list[str]:
    return response.xpath(".//rs:RegistryError/@errorCode", namespaces=NS)


def status(response: etree._Element) -> str:
    return response.get("status").rsplit(":", 1)[-1]


def adhoc_query(query_id: str, params: dict[str, list[str] | str], return_type: str = "LeafClass"):
    req = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, f"{{{QUERY}}}ResponseOption", returnType=return_type,
                     returnComposedObjects="true")
    aq = etree.SubElement(req, f"{{{RIM}}}AdhocQuery", id=query_id)
    for name, values in params.items():
        slot = etree.SubElement(aq, f"{{{RIM}}}Slot", name=name)
        vl = etree.SubElement(slot, f"{{{RIM}}}ValueList")
        for v in [values] if isinstance(values, str) else values:
            etree.SubElement(vl, f"{{{RIM}}}Value").text = v
    return req


def find_documents(server, patient: str, statuses=(APPROVED,), return_type="LeafClass", **extra):
    params = {"$XDSDocumentEntryPatientId": f"'{patient}'",
              "$XDSDocumentEntryStatus": "(" + ",".join(f"'{s}'" for s in statuses) + ")"}
    params.update(extra)
    return registry(server).call(ITI18, adhoc_query(FIND_DOCUMENTS, params, return_type)).payload


def raw_post(server, body: bytes, action: str | None = ITI42, path: str = "/xds/registry",
             content_type: str = "application/soap+xml; charset=UTF-8") -> httpx.Response:
    return httpx.post(server.url(path), content=body, headers={"Content-Type": content_type},
                      timeout=60)


def envelope(body: str, action: str | None = ITI42, extra_header: str = "") -> bytes:
    action_h = f"<wsa:Action>{action}</wsa:Action>" if action else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{SOAP12}" '
            f'xmlns:wsa="{WSA}"><soap:Header>{action_h}<wsa:MessageID>urn:uuid:{uuid.uuid4()}'
            f"</wsa:MessageID>{extra_header}</soap:Header><soap:Body>{body}</soap:Body>"
            "</soap:Envelope>").encode()


def fault(response: httpx.Response) -> tuple[str, str | None, str]:
    """(code, subcode, reason) of a SOAP 1.2 fault answer."""
    env = etree.fromstring(response.content)
    f = env.find(f".//{{{SOAP12}}}Fault")
    assert f is not None, response.text[:500]
    code = f.findtext(f"{{{SOAP12}}}Code/{{{SOAP12}}}Value")
    sub = f.findtext(f"{{{SOAP12}}}Code/{{{SOAP12}}}Subcode/{{{SOAP12}}}Value")
    reason = f.findtext(f"{{{SOAP12}}}Reason/{{{SOAP12}}}Text")
    return code, sub, reason


def find_folders(server, patient: str, return_type="LeafClass"):
    params = {"$XDSFolderPatientId": f"'{patient}'", "$XDSFolderStatus": f"('{APPROVED}')"}
    return registry(server).call(ITI18, adhoc_query(FIND_FOLDERS, params, return_type)).payload


def get_folder_and_contents(server, folder_uuid: str):
    params = {"$XDSFolderEntryUUID": f"'{folder_uuid}'"}
    return registry(server).call(ITI18, adhoc_query(GET_FOLDER_AND_CONTENTS, params)).payload


def repository(server) -> SoapClient:
    return SoapClient(server.url("/xds/repository"))


def repository_unique_id(server) -> str:
    from pathlib import Path
    return (Path(server.home) / "repository-unique-id").read_text().strip()
