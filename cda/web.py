"""HTTP routes of the CDA package, mounted by :mod:`opendmp.app` (``extra_routes``):

* ``GET /patients/<INS>/summary`` -> the patient's summary as JSON (:mod:`cda.summary`);
* ``GET /documents/<uniqueId>.html`` -> a stored CDA rendered as HTML (:mod:`cda.render`),
  read through the repository's index and encrypted store and checked against the SHA-1
  recorded at ITI-41 before it is rendered.

Both are health data read over plain HTTP, without an assertion: every request goes
through :func:`opendmp.policy.may_read` (:data:`~opendmp.policy.HEALTH_DATA`) first and
is answered 403 unless the TLS client certificate is a configured health-data reader
(``OPENDMP_HEALTH_DATA_READERS``), or the request comes from loopback in development.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Callable
from urllib.parse import unquote

from opendmp.db import read_transaction
from opendmp.policy import HEALTH_DATA, HttpReaders, Reader, may_read
from repository import index
from repository.crypto import StoreError
from soapstack.wsgi import peer_subject

from .document import CdaError
from .render import SECURITY_HEADERS, render
from .summary import patient_summary

log = logging.getLogger("opendmp.cda")

_INS = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}$")
_UID = re.compile(r"^[0-9A-Za-z.^_-]{1,128}$")
MAX_RENDER_BYTES = 32 * 1024 * 1024


def _answer(start_response, status: str, body: bytes, content_type: str,
            extra: list | None = None):
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body))), *(extra or [])])
    return [body]


def _text(start_response, status: str, message: str):
    return _answer(start_response, status, (message + "\n").encode(), "text/plain; charset=utf-8",
                   [("X-Content-Type-Options", "nosniff")])


def _refusal(readers: HttpReaders, environ) -> str | None:
    """None when the reader may read health data, else the reason (logged, answered 403)."""
    reader = Reader(peer_subject(environ), environ.get("REMOTE_ADDR"))
    decision = may_read(readers, reader, HEALTH_DATA)
    if decision.allowed:
        return None
    log.warning("refused %s: %s", environ.get("PATH_INFO", ""), decision.reason)
    return decision.reason


def summary_app(engine, readers: HttpReaders) -> Callable:
    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            return _text(start_response, "405 Method Not Allowed", "GET only")
        refused = _refusal(readers, environ)
        if refused:
            return _text(start_response, "403 Forbidden", refused)
        parts = unquote(environ.get("PATH_INFO", "")).strip("/").split("/")
        if len(parts) != 3 or parts[0] != "patients" or parts[2] != "summary":
            return _text(start_response, "404 Not Found", "not found")
        ins = parts[1].split("^")[0]
        if not _INS.match(ins):
            return _text(start_response, "400 Bad Request",
                         "expected /patients/<INS: 15 characters>/summary")
        summary = patient_summary(engine, ins)
        if summary is None:
            return _text(start_response, "404 Not Found", "no summary for this patient")
        body = json.dumps(summary, ensure_ascii=False).encode("utf-8")
        return _answer(start_response, "200 OK", body, "application/json; charset=utf-8",
                       [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return app


def document_app(repo, readers: HttpReaders) -> Callable:
    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            return _text(start_response, "405 Method Not Allowed", "GET only")
        refused = _refusal(readers, environ)
        if refused:
            return _text(start_response, "403 Forbidden", refused)
        path = unquote(environ.get("PATH_INFO", ""))
        if not path.startswith("/documents/") or not path.endswith(".html"):
            return _text(start_response, "404 Not Found", "not found")
        uid = path[len("/documents/"):-len(".html")]
        if not _UID.match(uid):
            return _text(start_response, "400 Bad Request", "not a document uniqueId")
        with read_transaction(repo.engine) as conn:
            doc = index.lookup(conn, [uid]).get(uid)
        if doc is None or doc.state != index.COMMITTED:
            return _text(start_response, "404 Not Found", "no such document")
        if doc.size > MAX_RENDER_BYTES:
            return _text(start_response, "413 Content Too Large", "document too large to render")
        try:
            h = hashlib.sha1()
            chunks = []
            with repo.store.open(doc.storage_key) as reader:
                for chunk in reader:
                    h.update(chunk)
                    chunks.append(chunk)
            if h.hexdigest() != doc.sha1:
                raise StoreError("SHA-1 differs from the one recorded at ITI-41")
        except StoreError as exc:
            log.error("document %s cannot be rendered: %s", uid, exc)
            return _text(start_response, "500 Internal Server Error", "document damaged")
        try:
            page = render(b"".join(chunks)).encode("utf-8")
        except CdaError as exc:
            return _text(start_response, "415 Unsupported Media Type",
                         f"not a readable CDA document: {exc}")
        return _answer(start_response, "200 OK", page, "text/html; charset=utf-8",
                       SECURITY_HEADERS)
    return app


def routes(engine, repo, readers: HttpReaders) -> dict[str, Callable]:
    """``extra_routes`` for :class:`soapstack.wsgi.SoapApplication`."""
    return {"/patients/": summary_app(engine, readers),
            "/documents/": document_app(repo, readers)}
