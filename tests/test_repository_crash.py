"""A crash at any point of ITI-41 leaves no document a query can find without its bytes
and, after the next start (recovery sweep), no orphan bytes (ITI TF-2b §3.41.4.1.3).

The server process group is killed with SIGKILL: first the worker, at failpoints armed
with ``OPENDMP_FAILPOINTS``, or in the middle of a slow upload; then the whole server.
With the in-process registry, one write transaction records the index row and the
registration; the failpoints are inside it (after the index row; after the registration,
before the commit: nothing may remain) and after its commit, before the staged file is
renamed into place (the document is registered: it must stay retrievable, and the
recovery sweep moves the file). With a remote registry, the failpoint after its Success
and before the index row is marked COMMITTED: the sweep commits the row, with the
patient recorded in it at ITI-41.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import factory as F
import httpx
import pytest
from test_policy_server import _refused, _retrieve
from xds import NS, error_codes, find_documents, repository, repository_unique_id, status

from registry.hl7types import parse_cx
from repository.source import DocumentContent, provide_and_register, retrieve
from xua.idp import VihfClaims, issue


def _files(srv) -> list[Path]:
    return [p for p in (Path(srv.home) / "documents").rglob("*") if p.is_file()]


def _submission(patient):
    sub = F.submission(patient)
    for de in sub.documents:
        de.hash = de.size = de.repository_unique_id = None
    return sub


def _assert_nothing_left(srv, patient, unique_id):
    assert _files(srv) == []
    assert not find_documents(srv, parse_cx(patient).canonical).xpath(
        "//rim:ExtrinsicObject", namespaces=NS)
    response, docs = retrieve(repository(srv), repository_unique_id(srv), [unique_id])
    assert docs == [] and error_codes(response) == ["XDSDocumentUniqueIdError"]


@pytest.mark.parametrize("point", ["iti41.after_index", "iti41.before_commit"])
def test_kill9_between_storing_and_registering(server_factory, point):
    srv = server_factory(env={"OPENDMP_FAILPOINTS": f"{point}:kill"})
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    sub = _submission(patient)
    with pytest.raises((httpx.HTTPError, OSError)):
        provide_and_register(repository(srv), sub,
                             {sub.documents[0].id: DocumentContent.of(b"<doc>crash</doc>")})
    assert _files(srv), "the crash should have left the staged bytes behind"
    srv.kill9()
    srv.restart(env={"OPENDMP_FAILPOINTS": ""})
    assert "repository recovery" in srv.log_text(since_start=True)
    _assert_nothing_left(srv, patient, sub.documents[0].unique_id)
    again = _submission(patient)
    answer = provide_and_register(repository(srv), again, {again.documents[0].id:
                                                           DocumentContent.of(b"<doc/>")})
    assert status(answer.payload) == "Success"


def test_kill9_after_the_commit_before_the_rename_keeps_the_document(server_factory):
    srv = server_factory(env={"OPENDMP_FAILPOINTS": "iti41.after_commit:kill"})
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    sub = _submission(patient)
    content = b"<doc>registered, then the worker died</doc>"
    with pytest.raises((httpx.HTTPError, OSError)):
        provide_and_register(repository(srv), sub,
                             {sub.documents[0].id: DocumentContent.of(content)})
    staging = Path(srv.home) / "documents" / "staging"
    assert [p.suffix for p in _files(srv)] == [".staged"]
    uid = sub.documents[0].unique_id

    def assert_served():
        assert find_documents(srv, parse_cx(patient).canonical).xpath(
            "//rim:ExtrinsicObject", namespaces=NS)
        response, docs = retrieve(repository(srv), repository_unique_id(srv), [uid])
        assert status(response) == "Success" and [d.content for d in docs] == [content]

    assert_served()                      # a new worker reads it from staging/
    srv.kill9()
    srv.restart(env={"OPENDMP_FAILPOINTS": ""})
    assert "repository recovery" in srv.log_text(since_start=True)
    assert list(staging.iterdir()) == []
    assert [p.parent.parent.parent.name for p in _files(srv)] == ["objects"]
    assert_served()


def test_kill9_during_a_slow_upload_leaves_no_partial_bytes(server_factory):
    srv = server_factory()
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    sub = _submission(patient)
    size = 8 * 1024 * 1024
    started = threading.Event()

    def slow_chunks():
        for i in range(size // 65536):
            if i == 16:
                started.set()
                time.sleep(60)  # the server is killed while this upload hangs
            yield b"x" * 65536

    def upload():
        try:
            provide_and_register(repository(srv), sub,
                                 {sub.documents[0].id: DocumentContent("text/plain", size,
                                                                       slow_chunks())})
        except Exception:  # noqa: BLE001 - the connection dies with the server
            pass

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert started.wait(30)
    time.sleep(0.5)
    srv.kill9()
    srv.restart()
    _assert_nothing_left(srv, patient, sub.documents[0].unique_id)


def test_kill9_after_a_remote_registry_registered_keeps_the_document_and_its_patient(
        server_factory):
    """Remote registry: the worker dies after the registry's Success, before the STAGED
    row is marked COMMITTED. The recovery sweep finds the document registered and commits
    the row — with the patient recorded in that same row at ITI-41, so an ITI-43 under
    the patient's assertion is served and one under another patient's is refused
    (opendmp.policy.require_documents; this node's registry does not know the document)."""
    registry_node = server_factory()
    srv = server_factory(env={"OPENDMP_REGISTRY_URL": registry_node.url("/xds/registry"),
                              "OPENDMP_FAILPOINTS": "iti41.after_register:kill"})
    patient, other = F.new_ins(), F.new_ins()
    assert registry_node.run_cli(["patient", "add", patient]).returncode == 0
    sub = _submission(patient)
    content = b"<doc>registered remotely, then the worker died</doc>"
    with pytest.raises((httpx.HTTPError, OSError)):
        provide_and_register(repository(srv), sub,
                             {sub.documents[0].id: DocumentContent.of(content)})
    uid = sub.documents[0].unique_id
    assert find_documents(registry_node, parse_cx(patient).canonical).xpath(
        "//rim:ExtrinsicObject", namespaces=NS)
    response, docs = retrieve(repository(srv), repository_unique_id(srv), [uid])
    assert error_codes(response) == ["XDSDocumentUniqueIdError"]   # STAGED: not served yet
    srv.kill9()
    srv.restart(env={"OPENDMP_FAILPOINTS": ""})
    assert "committed=1" in srv.log_text(since_start=True)

    def assertion(cx):
        ins, _, _, authority = cx.split("^")[:4]
        return issue(srv.home, VihfClaims(ins=ins, ins_oid=authority.split("&")[1]))

    assert _retrieve(srv, assertion(patient), [uid]) == ("Success", [content])
    assert _refused(lambda: _retrieve(srv, assertion(other), [uid])) \
        .subcode.endswith("FailedAuthentication")
