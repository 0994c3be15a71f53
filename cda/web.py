"""HTTP routes of the CDA package, mounted by :mod:`opendmp.app` (``extra_routes``):

* ``GET /patients/<INS>/summary`` -> the patient's summary as JSON (:mod:`cda.summary`);
* ``GET /documents/<uniqueId>.html`` -> a stored CDA rendered as HTML (:mod:`cda.render`),
  read through the repository's index and encrypted store and checked against the SHA-1
  recorded at ITI-41 before it is rendered.

Both are health data read over plain HTTP, without an assertion: every request goes
through :func:`opendmp.policy.may_read` (:data:`~opendmp.policy.HEALTH_DATA`) first and
is answered 403 unless the TLS client certificate is a configured health-data reader
(``OPENDMP_HEALTH_DATA_READERS``), or the request comes from loopback in development.

Every GET answered here, granted or refused, is handed to ``audit`` (when ATNA has
destinations: :func:`atna.hooks.health_data_reads`) with whose data it was: the
document's patient as the repository's index recorded it at ITI-41, or the patient
identifiers this node knows for the INS (:func:`cda.summary.patient_identifiers`); an
unknown document names no patient. The patient's access history shows these reads
(:mod:`atna.history`, ``reading``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Callable, NamedTuple, Sequence
from urllib.parse import unquote

from sqlalchemy.exc import SQLAlchemyError

from opendmp.db import read_transaction
from opendmp.policy import HEALTH_DATA, HttpReaders, Reader, may_read
from registry.hl7types import cx_match_key
from repository import index
from repository.crypto import StoreError
from soapstack.wsgi import peer_subject

from .document import CdaError
from .render import SECURITY_HEADERS, render
from .summary import patient_identifiers, patient_summary

log = logging.getLogger("opendmp.cda")

_INS = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}$")
_UID = re.compile(r"^[0-9A-Za-z.^_-]{1,128}$")
MAX_RENDER_BYTES = 32 * 1024 * 1024


#: ``audit(route, reader, url, status, message, patients, document)``: one call per answer
#: (route: ``document-html`` or ``patient-summary``; status: the HTTP status line).
Audit = Callable[[str, Reader, str, str, str, Sequence[str], str | None], None]
DOCUMENT_HTML, PATIENT_SUMMARY = "document-html", "patient-summary"


class Answer(NamedTuple):
    status: str
    body: bytes
    content_type: str
    headers: list
    #: what the answer says, for the audit (empty for a successful read)
    message: str = ""
    patients: Sequence[str] = ()
    document: str | None = None


def _text(status: str, message: str, patients: Sequence[str] = (),
          document: str | None = None) -> Answer:
    return Answer(status, (message + "\n").encode(), "text/plain; charset=utf-8",
                  [("X-Content-Type-Options", "nosniff")], message, patients, document)


def _reader(environ) -> Reader:
    return Reader(peer_subject(environ), environ.get("REMOTE_ADDR"))


def _refusal(readers: HttpReaders, reader: Reader, environ) -> str | None:
    """None when the reader may read health data, else the reason (logged, answered 403)."""
    decision = may_read(readers, reader, HEALTH_DATA)
    if decision.allowed:
        return None
    log.warning("refused %s: %s", environ.get("PATH_INFO", ""), decision.reason)
    return decision.reason


def _url(environ) -> str:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    path = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path.split('?', 1)[0]}"[:512]


def _served(route: str, serve: Callable[[dict, Reader], Answer],
            audit: Audit | None) -> Callable:
    """The WSGI app: GET only; ``serve`` answers; the answer is audited."""
    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            a = _text("405 Method Not Allowed", "GET only")
        else:
            reader = _reader(environ)
            try:
                a = serve(environ, reader)
            except Exception as exc:
                if audit is not None:  # the URL says what was asked for
                    audit(route, reader, _url(environ), "500 Internal Server Error",
                          f"internal error: {type(exc).__name__}", (), None)
                raise
            if audit is not None:
                audit(route, reader, _url(environ), a.status, a.message, a.patients, a.document)
        start_response(a.status, [("Content-Type", a.content_type),
                                  ("Content-Length", str(len(a.body))), *a.headers])
        return [a.body]
    return app


def _summary_ins(environ) -> tuple[str | None, str | None]:
    """(the INS of ``/patients/<INS>/summary``, the identifier as asked), or Nones."""
    parts = unquote(environ.get("PATH_INFO", "")).strip("/").split("/")
    if len(parts) != 3 or parts[0] != "patients" or parts[2] != "summary":
        return None, None
    ins = parts[1].split("^")[0]
    return (ins if _INS.match(ins) else None), parts[1]


def _document_uid(environ) -> str | None:
    path = unquote(environ.get("PATH_INFO", ""))
    if not path.startswith("/documents/") or not path.endswith(".html"):
        return None
    uid = path[len("/documents/"):-len(".html")]
    return uid if _UID.match(uid) else None


def summary_app(engine, readers: HttpReaders, audit: Audit | None = None) -> Callable:
    def patients(ins: str, asked: str) -> list[str]:
        """Whose summary it is, for the audit: the identifiers known for the INS, else
        the identifier as asked (an unknown patient)."""
        if audit is None:
            return []
        try:
            return patient_identifiers(engine, ins) or [cx_match_key(asked)]
        except SQLAlchemyError:  # the audit still says who asked for what
            log.exception("whose summary is %s: not known", ins)
            return [cx_match_key(asked)]

    def serve(environ, reader: Reader) -> Answer:
        ins, asked = _summary_ins(environ)
        refused = _refusal(readers, reader, environ)
        if refused:
            return _text("403 Forbidden", refused, patients(ins, asked) if ins else ())
        if asked is None:
            return _text("404 Not Found", "not found")
        if ins is None:
            return _text("400 Bad Request", "expected /patients/<INS: 15 characters>/summary")
        summary = patient_summary(engine, ins)
        if summary is None:
            return _text("404 Not Found", "no summary for this patient", patients(ins, asked))
        body = json.dumps(summary, ensure_ascii=False).encode("utf-8")
        return Answer("200 OK", body, "application/json; charset=utf-8",
                      [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")],
                      patients=patients(ins, asked))

    return _served(PATIENT_SUMMARY, serve, audit)


def document_app(repo, readers: HttpReaders, audit: Audit | None = None) -> Callable:
    def lookup(uid: str):
        with read_transaction(repo.engine) as conn:
            return index.lookup(conn, [uid]).get(uid)

    def refused_owner(uid: str | None) -> tuple[str, ...]:
        """Whose document a refused request asked for, for the audit only."""
        if uid is None or audit is None:
            return ()
        try:
            return _owner(lookup(uid))
        except SQLAlchemyError:  # the refusal stands, and is audited naming the document
            log.exception("whose document is %s: not known", uid)
            return ()

    def serve(environ, reader: Reader) -> Answer:
        uid = _document_uid(environ)
        refused = _refusal(readers, reader, environ)
        if refused:
            return _text("403 Forbidden", refused, refused_owner(uid), uid)
        if uid is None:
            path = unquote(environ.get("PATH_INFO", ""))
            if not path.startswith("/documents/") or not path.endswith(".html"):
                return _text("404 Not Found", "not found")
            return _text("400 Bad Request", "not a document uniqueId")
        doc = lookup(uid)
        owner = _owner(doc)
        if doc is None or doc.state != index.COMMITTED:
            return _text("404 Not Found", "no such document", owner, uid)
        if doc.size > MAX_RENDER_BYTES:
            return _text("413 Content Too Large", "document too large to render", owner, uid)
        try:
            h = hashlib.sha1()
            chunks = []
            with repo.store.open(doc.storage_key) as stored:
                for chunk in stored:
                    h.update(chunk)
                    chunks.append(chunk)
            if h.hexdigest() != doc.sha1:
                raise StoreError("SHA-1 differs from the one recorded at ITI-41")
        except StoreError as exc:
            log.error("document %s cannot be rendered: %s", uid, exc)
            return _text("500 Internal Server Error", "document damaged", owner, uid)
        try:
            page = render(b"".join(chunks)).encode("utf-8")
        except CdaError as exc:
            return _text("415 Unsupported Media Type", f"not a readable CDA document: {exc}",
                         owner, uid)
        return Answer("200 OK", page, "text/html; charset=utf-8", SECURITY_HEADERS,
                      patients=owner, document=uid)

    return _served(DOCUMENT_HTML, serve, audit)


def _owner(doc) -> tuple[str, ...]:
    """The document's patient as the index recorded it at ITI-41 (none before 0007)."""
    return (doc.patient_cx,) if doc is not None and doc.patient_cx else ()


def routes(engine, repo, readers: HttpReaders, audit: Audit | None = None) -> dict[str, Callable]:
    """``extra_routes`` for :class:`soapstack.wsgi.SoapApplication`; ``audit`` receives
    every answered read (:func:`atna.hooks.health_data_reads`), None: not audited."""
    return {"/patients/": summary_app(engine, readers, audit),
            "/documents/": document_app(repo, readers, audit)}
