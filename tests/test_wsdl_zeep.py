"""The official WSDL is served at ``?wsdl`` with schemaLocations that resolve on our own
server, and zeep (a real third-party SOAP client) loads it and calls ITI-18."""
from __future__ import annotations

from urllib.parse import urljoin

import factory as F
import httpx
import zeep
from lxml import etree
from xds import ITI42, registry, status
from zeep.transports import Transport

XSD = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"


class _OfflineTransport(Transport):
    """zeep transport that only reaches our server (no internet here, nor in CI)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def load(self, url):
        assert url.startswith(self.base), f"zeep tried to fetch {url} outside our server"
        return super().load(url)


def test_wsdl_points_at_us_and_every_schema_location_resolves(server):
    wsdl_url = server.url("/xds/registry?wsdl")
    r = httpx.get(wsdl_url)
    assert r.status_code == 200
    doc = etree.fromstring(r.content)
    address = doc.find(".//{http://schemas.xmlsoap.org/wsdl/soap12/}address")
    assert address.get("location") == server.url("/xds/registry")
    seen, todo = set(), [(wsdl_url, doc)]
    while todo:
        base, tree = todo.pop()
        for el in tree.iter(f"{{{XSD}}}include", f"{{{XSD}}}import"):
            loc = el.get("schemaLocation")
            if not loc:
                continue
            url = urljoin(base, loc)
            if url in seen:
                continue
            seen.add(url)
            resp = httpx.get(url)
            assert resp.status_code == 200, f"{loc} (from {base}) -> {url}: {resp.status_code}"
            todo.append((url, etree.fromstring(resp.content)))
    assert any(u.endswith("/ebRS/rim.xsd") for u in seen)
    assert len(seen) > 20  # ebRS + HL7v3 schemas


def test_zeep_loads_the_wsdl_and_calls_iti18(server, cli):
    patient = F.new_ins()
    assert cli("patient", "add", patient).returncode == 0
    sub = F.submission(patient, n_docs=2)
    assert status(registry(server).call(ITI42, F.submit_objects_request(sub)).payload) == \
        "Success"

    client = zeep.Client(server.url("/xds/registry?wsdl"),
                         transport=_OfflineTransport(server.base_url),
                         settings=zeep.Settings(strict=False, xml_huge_tree=False))
    service = client.bind("DocumentRegistry_Service", "DocumentRegistry_Port_Soap12")
    result = service.DocumentRegistry_RegistryStoredQuery(
        ResponseOption={"returnType": "ObjectRef", "returnComposedObjects": True},
        AdhocQuery={
            "id": "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
            "Slot": [
                # rim:ValueListType is a repeating sequence: zeep spells it _value_1.
                {"name": "$XDSDocumentEntryPatientId",
                 "ValueList": {"_value_1": [{"Value": f"'{patient}'"}]}},
                {"name": "$XDSDocumentEntryStatus", "ValueList": {"_value_1": [
                    {"Value": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"}]}},
            ],
        },
    )
    assert result.status.endswith(":Success")
    # zeep does not resolve ebRIM's substitution groups (deps.md §2): with strict=False the
    # ObjectRefs arrive as raw elements.
    refs = list(result.RegistryObjectList._raw_elements)
    assert [etree.QName(r).localname for r in refs] == ["ObjectRef", "ObjectRef"]
    assert all(r.get("id").startswith("urn:uuid:") for r in refs)
