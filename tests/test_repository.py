"""XDS.b Document Repository on the real server: ITI-41 Provide and Register, ITI-43
Retrieve (ITI TF-2b §3.41, §3.43), encryption at rest, atomicity, failure paths."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import factory as F
import httpx
import pytest
from lxml import etree
from xds import (
    NS,
    error_codes,
    fault,
    find_documents,
    raw_post,
    repository,
    repository_unique_id,
    status,
)

from registry.hl7types import parse_cx
from repository.source import DocumentContent, provide_and_register, retrieve
from soapstack.mtom import mtom_message


def _patient(server) -> str:
    patient = F.new_ins()
    assert server.run_cli(["patient", "add", patient]).returncode == 0
    return patient


def _unsigned_submission(patient: str, n_docs: int = 1):
    """A submission whose documents carry no hash/size/repositoryUniqueId: the repository
    computes them (ITI TF-2b §3.41.4.1.3)."""
    sub = F.submission(patient, n_docs=n_docs)
    for de in sub.documents:
        de.hash = de.size = de.repository_unique_id = None
    return sub


def _pnr(server, sub, contents: dict[str, bytes], mime="text/xml", mtom=True):
    docs = {k: DocumentContent.of(v, mime) for k, v in contents.items()}
    return provide_and_register(repository(server), sub, docs, mtom=mtom).payload


def _stored_files(server) -> list[Path]:
    return [p for p in (Path(server.home) / "documents").rglob("*") if p.is_file()]


def _objects(server) -> list[Path]:
    return [p for p in (Path(server.home) / "documents" / "objects").rglob("*") if p.is_file()]


@pytest.mark.parametrize("content", [
    b"<ClinicalDocument>compte rendu</ClinicalDocument>",
    b"\r\n<doc>starts and ends with CRLF</doc>\r\n",
    b"",
    b"<x>" + os.urandom(300_000).hex().encode() + b"</x>",
], ids=["plain", "crlf-edges", "zero-bytes", "600KB"])
def test_iti41_then_iti43_returns_identical_bytes_with_hash_and_size_set(server, content):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    de = sub.documents[0]
    answer = _pnr(server, sub, {de.id: content})
    assert status(answer) == "Success", etree.tostring(answer)
    (eo,) = find_documents(server, parse_cx(patient).canonical).xpath("//rim:ExtrinsicObject",
                                                                      namespaces=NS)
    slots = {s.get("name"): s.xpath("rim:ValueList/rim:Value/text()", namespaces=NS)
             for s in eo.findall("rim:Slot", NS)}
    import hashlib
    assert slots["hash"] == [hashlib.sha1(content).hexdigest()]
    assert slots["size"] == [str(len(content))]
    assert slots["repositoryUniqueId"] == [repository_unique_id(server)]
    response, docs = retrieve(repository(server), repository_unique_id(server), [de.unique_id])
    assert status(response) == "Success"
    assert [d.content for d in docs] == [content]
    assert docs[0].mime_type == "text/xml"


def test_iti41_inline_base64_document(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    content = b"<doc>inline base64</doc>\n"
    assert status(_pnr(server, sub, {sub.documents[0].id: content}, mtom=False)) == "Success"
    _, docs = retrieve(repository(server), repository_unique_id(server),
                       [sub.documents[0].unique_id])
    assert docs[0].content == content


def test_nothing_readable_on_disk(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    phrase = b"PHRASE-CONNUE-DU-COMPTE-RENDU-4242"
    assert status(_pnr(server, sub, {sub.documents[0].id: b"<d>" + phrase + b"</d>"})) == \
        "Success"
    found = subprocess.run(["grep", "-r", "-l", phrase.decode(), str(Path(server.home))],
                           capture_output=True, text=True)
    assert found.returncode == 1, found.stdout  # grep: 1 = no match
    assert _objects(server)


def test_supplied_hash_that_disagrees_is_XDSRepositoryMetadataError_and_nothing_stored(
        server_factory):
    srv = server_factory()
    patient = _patient(srv)
    sub = _unsigned_submission(patient)
    sub.documents[0].hash = "0" * 40
    answer = _pnr(srv, sub, {sub.documents[0].id: b"<doc>other bytes</doc>"})
    assert error_codes(answer) == ["XDSRepositoryMetadataError"]
    assert "does not match the document" in etree.tostring(answer).decode()
    assert _stored_files(srv) == []
    assert not find_documents(srv, parse_cx(patient).canonical).xpath("//rim:ExtrinsicObject",
                                                                      namespaces=NS)


def test_supplied_size_and_foreign_repository_id_are_refused(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    sub.documents[0].size = "99"
    sub.documents[0].repository_unique_id = "1.2.3.4"
    answer = _pnr(server, sub, {sub.documents[0].id: b"<doc/>"})
    text = etree.tostring(answer).decode()
    assert error_codes(answer) == ["XDSRepositoryMetadataError"] * 2
    assert "size 99" in text and "repositoryUniqueId 1.2.3.4" in text


def test_mime_type_contradicted_by_content(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    sub.documents[0].mime_type = "application/pdf"
    answer = _pnr(server, sub, {sub.documents[0].id: b"<not-a-pdf/>"}, mime="application/pdf")
    assert error_codes(answer) == ["XDSRepositoryMetadataError"]
    assert "not application/pdf" in etree.tostring(answer).decode()


def test_document_entry_without_document_is_XDSMissingDocument(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient, n_docs=2)
    answer = _pnr(server, sub, {sub.documents[0].id: b"<a/>"})
    assert error_codes(answer) == ["XDSMissingDocument"]


def test_document_without_metadata_is_XDSMissingDocumentMetadata(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    answer = _pnr(server, sub, {sub.documents[0].id: b"<a/>", "Stray": b"<b/>"})
    assert error_codes(answer) == ["XDSMissingDocumentMetadata"]


def test_registry_refusal_removes_the_stored_bytes(server_factory):
    srv = server_factory()
    sub = _unsigned_submission(F.new_ins())  # patient never fed
    answer = _pnr(srv, sub, {sub.documents[0].id: b"<doc/>"})
    assert error_codes(answer) == ["XDSUnknownPatientId"]
    assert _stored_files(srv) == []


def test_iti43_unknown_document_wrong_repository_and_partial_success(server):
    patient = _patient(server)
    sub = _unsigned_submission(patient)
    assert status(_pnr(server, sub, {sub.documents[0].id: b"<doc/>"})) == "Success"
    rid = repository_unique_id(server)
    response, docs = retrieve(repository(server), rid, ["1.2.3.999"])
    assert status(response) == "Failure"
    assert error_codes(response) == ["XDSDocumentUniqueIdError"]
    response, docs = retrieve(repository(server), "1.2.3.4", [sub.documents[0].unique_id])
    assert error_codes(response) == ["XDSUnknownRepositoryId"] and docs == []
    response, docs = retrieve(repository(server), rid, [sub.documents[0].unique_id, "1.2.3.999"])
    assert status(response) == "PartialSuccess"
    assert [d.document_unique_id for d in docs] == [sub.documents[0].unique_id]


def test_iti43_corrupted_file_is_reported_not_served(server_factory):
    srv = server_factory()
    patient = _patient(srv)
    sub = _unsigned_submission(patient)
    assert status(_pnr(srv, sub, {sub.documents[0].id: b"<doc>" + b"x" * 1000 + b"</doc>"})) \
        == "Success"
    (stored,) = _objects(srv)
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0x01
    stored.write_bytes(bytes(data))
    response, docs = retrieve(repository(srv), repository_unique_id(srv),
                              [sub.documents[0].unique_id])
    assert status(response) == "Failure" and docs == []
    assert error_codes(response) == ["XDSRepositoryError"]


def test_registry_down_is_XDSRegistryNotAvailable_and_nothing_stored(server_factory):
    srv = server_factory(env={"OPENDMP_REGISTRY_URL": "http://127.0.0.1:9/xds/registry"})
    sub = _unsigned_submission(F.new_ins())
    answer = _pnr(srv, sub, {sub.documents[0].id: b"<doc/>"})
    assert error_codes(answer) == ["XDSRegistryNotAvailable"]
    assert _stored_files(srv) == []


def test_remote_registry_registers_and_passes_its_errors_back_unchanged(server, server_factory):
    repo_srv = server_factory(env={"OPENDMP_REGISTRY_URL": server.url("/xds/registry")})
    patient = _patient(server)  # known to the registry, not to the repository's own db
    sub = _unsigned_submission(patient)
    assert status(_pnr(repo_srv, sub, {sub.documents[0].id: b"<remote/>"})) == "Success"
    (eo,) = find_documents(server, parse_cx(patient).canonical).xpath("//rim:ExtrinsicObject",
                                                                      namespaces=NS)
    assert eo.xpath("rim:Slot[@name='repositoryUniqueId']//rim:Value/text()",
                    namespaces=NS) == [repository_unique_id(repo_srv)]
    unknown = _unsigned_submission(F.new_ins())
    answer = _pnr(repo_srv, unknown, {unknown.documents[0].id: b"<x/>"})
    assert error_codes(answer) == ["XDSUnknownPatientId"]
    assert "is not known to the registry" in etree.tostring(answer).decode()


def _raw_mtom(server, body: bytes, content_type: str) -> httpx.Response:
    return raw_post(server, body, path="/xds/repository", content_type=content_type)


def _mtom_bytes(server, patient):
    from repository.source import provide_and_register_request
    from soapstack.client import build_envelope
    sub = _unsigned_submission(patient)
    req, atts = provide_and_register_request(sub, {sub.documents[0].id: DocumentContent.of(
        b"<doc>" + b"y" * 5000 + b"</doc>")})
    env = build_envelope("urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
                         server.url("/xds/repository"), req)
    ctype, _, body = mtom_message(env, atts)
    return ctype, b"".join(body)


@pytest.mark.parametrize("damage", ["truncated", "truncated-after-the-document", "no-root",
                                    "wrong-start"])
def test_broken_multipart_is_a_fault_and_nothing_stored(server_factory, damage):
    srv = server_factory()
    patient = _patient(srv)
    ctype, body = _mtom_bytes(srv, patient)
    if damage == "truncated":
        body = body[: len(body) // 2]
    elif damage == "truncated-after-the-document":
        # the document streams into the store whole; the message ends inside a later part
        boundary = ctype.split('boundary="')[1].split('"')[0].encode()
        body = (body[:body.rindex(b"\r\n--" + boundary + b"--")] + b"\r\n--" + boundary
                + b"\r\nContent-ID: <extra@x>\r\n\r\nhalf of a part")
    elif damage == "no-root":
        start = ctype.split('start="<')[1].split(">")[0]
        body = body.replace(f"Content-ID: <{start}>".encode(), b"Content-ID: <other@x>")
    else:
        ctype = ctype.replace('start="<', 'start="<missing-')
    r = _raw_mtom(srv, body, ctype)
    assert r.status_code == 400, r.text[:500]
    assert fault(r)[0] == "env:Sender"
    assert _stored_files(srv) == []


def test_200_megabyte_document_in_and_out(server):
    """A 200 MB document goes through ITI-41 and ITI-43 (streamed both ways; the memory
    bound itself is measured by benchmarks/repository.py, not asserted here)."""
    import hashlib

    from repository.source import retrieve_request
    from soapstack.mtom import xop_attachment

    patient = _patient(server)
    sub = _unsigned_submission(patient)
    sub.documents[0].mime_type = "application/octet-stream"
    size, block = 200 * 1024 * 1024, os.urandom(1024 * 1024)
    sent = hashlib.sha1()

    def chunks():
        for i in range(size // len(block)):
            piece = bytes([i % 256]) + block[1:]
            sent.update(piece)
            yield piece

    answer = provide_and_register(repository(server), sub, {sub.documents[0].id: DocumentContent(
        "application/octet-stream", size, chunks())}).payload
    assert status(answer) == "Success", etree.tostring(answer)
    reply = repository(server).call("urn:ihe:iti:2007:RetrieveDocumentSet", retrieve_request(
        repository_unique_id(server), [sub.documents[0].unique_id]))
    try:
        doc = reply.payload.find(".//{urn:ihe:iti:xds-b:2007}Document")
        attachment = xop_attachment(doc, reply.attachments)
        got = hashlib.sha1()
        for chunk in attachment.chunks():
            got.update(chunk)
        assert attachment.size == size
        assert got.hexdigest() == sent.hexdigest()
    finally:
        reply.close()


@pytest.fixture
def tiny_disk_server(server_factory):
    """A server whose document store sits on a 3 MB tmpfs (a real full disk; needs root,
    as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    srv = server_factory(start=False)
    store_dir = Path(srv.home) / "documents"
    store_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(store_dir)],
                   check=True)
    try:
        yield srv.start()
    finally:
        srv.stop()
        subprocess.run(["umount", str(store_dir)], check=True)


def test_disk_full_is_XDSRepositoryOutOfResources_and_nothing_half_stored(tiny_disk_server):
    srv = tiny_disk_server
    patient = _patient(srv)
    small = _unsigned_submission(patient)
    assert status(_pnr(srv, small, {small.documents[0].id: b"<doc>" + b"s" * 500_000 +
                                    b"</doc>"})) == "Success"
    before = sorted(p.name for p in _stored_files(srv))
    big = _unsigned_submission(patient)
    answer = _pnr(srv, big, {big.documents[0].id: b"<doc>" + b"b" * 4_000_000 + b"</doc>"})
    assert error_codes(answer) == ["XDSRepositoryOutOfResources"]
    assert sorted(p.name for p in _stored_files(srv)) == before
    found = find_documents(srv, parse_cx(patient).canonical).xpath("//rim:ExtrinsicObject",
                                                                   namespaces=NS)
    assert len(found) == 1
    _, docs = retrieve(repository(srv), repository_unique_id(srv), [small.documents[0].unique_id])
    assert len(docs[0].content) == 500_011


def test_key_rotation_rewraps_without_rewriting_documents(server_factory):
    srv = server_factory()
    patient = _patient(srv)
    sub = _unsigned_submission(patient)
    content = b"<doc>" + b"r" * 200_000 + b"</doc>"
    assert status(_pnr(srv, sub, {sub.documents[0].id: content})) == "Success"
    (stored,) = _objects(srv)
    body_before = stored.read_bytes()[160:]
    rotated = srv.run_cli(["keys", "rotate"])
    assert rotated.returncode == 0, rotated.stderr
    srv.restart()
    rewrap = srv.run_cli(["keys", "rewrap"])
    assert rewrap.returncode == 0 and "re-wrapped 1 documents" in rewrap.stdout, rewrap.stdout
    usage = srv.run_cli(["keys", "usage"]).stdout.strip().splitlines()
    assert len(usage) == 1 and usage[0].endswith("(current): 1 documents")
    assert stored.read_bytes()[160:] == body_before
    old_keys = [k for k in (Path(srv.home) / "keys").glob("master-*.key")
                if usage[0].split()[0] not in k.name]
    assert len(old_keys) == 1
    old_keys[0].unlink()
    srv.restart()
    _, docs = retrieve(repository(srv), repository_unique_id(srv), [sub.documents[0].unique_id])
    assert docs[0].content == content


def test_a_document_unique_id_again_other_bytes_refused_same_bytes_stored_once(server_factory):
    """ITI TF-2b §3.41.4.1.3: a uniqueId the repository holds with other bytes is
    XDSNonIdenticalHash and changes nothing; with the same bytes, nothing is stored twice."""
    srv = server_factory()
    patient = _patient(srv)
    first = _unsigned_submission(patient)
    uid, content = first.documents[0].unique_id, b"<doc>version une</doc>"
    assert status(_pnr(srv, first, {first.documents[0].id: content})) == "Success"
    assert len(_objects(srv)) == 1

    other = _unsigned_submission(patient)
    other.documents[0].unique_id = uid
    answer = _pnr(srv, other, {other.documents[0].id: b"<doc>version deux</doc>"})
    assert error_codes(answer) == ["XDSNonIdenticalHash"], etree.tostring(answer)
    assert len(_stored_files(srv)) == 1

    same = _unsigned_submission(patient)
    same.documents[0].unique_id = uid
    answer = _pnr(srv, same, {same.documents[0].id: content})
    assert status(answer) == "Success", etree.tostring(answer)
    assert len(_stored_files(srv)) == 1
    _, docs = retrieve(repository(srv), repository_unique_id(srv), [uid])
    assert [d.content for d in docs] == [content]
