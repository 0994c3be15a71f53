"""The WSGI application that carries every SOAP endpoint (ITI TF-2x Appendix V).

Routing: ``POST <endpoint>`` dispatches on wsa:Action and checks the Body's first
child against the operation; ``GET <endpoint>?wsdl`` serves the official IHE WSDL
with its soap12:address pointed at us; ``GET /schema/...`` serves the vendored XSDs
the WSDL imports, so ``schemaLocation``s resolve on our own server.
"""
from __future__ import annotations

import json
import logging
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lxml import etree

from .envelope import (
    RequestTooLarge,
    SoapFault,
    SoapRequest,
    SoapResponse,
    envelope_chunks,
    fault_envelope,
    parse_envelope,
)
from .mtom import close_attachments, coalesce, mtom_message, open_mtom, require_complete
from .namespaces import WSA, qn
from .wssecurity import SecurityFault

log = logging.getLogger("opendmp.soap")

Handler = Callable[[SoapRequest], SoapResponse]
#: reads the request body; returns the SOAP envelope bytes and attachments by Content-ID.
MessageReader = Callable[[dict, int], tuple[bytes, dict]]


@dataclass(frozen=True)
class Operation:
    """One SOAP operation of an endpoint: its wsa:Action, its Body element, its handler."""

    action: str
    body_tag: str
    handler: Handler
    #: the handler reads MTOM attachments as they arrive (``soapstack.mtom.open_mtom``)
    #: and calls ``require_complete`` itself before acting; otherwise the whole message
    #: is read and checked before the handler runs.
    streams_attachments: bool = False


@dataclass
class SoapEndpoint:
    """A SOAP endpoint (one URL path) with its operations and its WSDL file."""

    path: str
    operations: list[Operation]
    wsdl: Path | None = None
    by_action: dict[str, Operation] = field(init=False)

    def __post_init__(self) -> None:
        self.by_action = {op.action: op for op in self.operations}


def read_plain_body(environ: dict, limit: int) -> tuple[bytes, dict]:
    """Read a non-MTOM request body, refusing more than ``limit`` bytes."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            n = int(length)
        except ValueError:
            raise SoapFault("invalid Content-Length") from None
        if n > limit:
            raise RequestTooLarge(n)
        data = stream.read(n)
    else:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise RequestTooLarge(len(data))
    return data, {}


class SoapApplication:
    """WSGI app serving SOAP endpoints, their WSDLs, the schemas and /health."""

    def __init__(
        self,
        endpoints: list[SoapEndpoint],
        schema_dir: Path,
        max_body: int,
        health: Callable[[], dict],
        max_mtom_body: int | None = None,
        readers: dict[str, MessageReader] | None = None,
        extra_routes: dict[str, Callable] | None = None,
        security: Callable[[SoapRequest], None] | None = None,
    ) -> None:
        self.endpoints = {ep.path: ep for ep in endpoints}
        self.schema_dir = schema_dir.resolve()
        #: in-memory (plain SOAP) bodies; MTOM bodies spool their parts and may be larger.
        self.max_body = max_body
        self.max_mtom_body = max_mtom_body or max_body
        self.health = health
        #: body readers by media type (``multipart/related`` is MTOM/XOP).
        self.readers = {"multipart/related": open_mtom, **(readers or {})}
        self.extra_routes = extra_routes or {}
        #: WS-Security/XUA step (xua.config.XuaStep): verifies the header and sets
        #: request.identity before any actor sees the request, or raises a SoapFault.
        self.security = security
        self.understood = getattr(security, "understood", frozenset())

    # ------------------------------------------------------------------ WSGI
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        endpoint = self.endpoints.get(path.rstrip("/") or "/")
        if endpoint is not None:
            if method == "POST":
                return self._soap(endpoint, environ, start_response)
            if method == "GET" and environ.get("QUERY_STRING", "").lower() == "wsdl":
                return self._wsdl(endpoint, environ, start_response)
            return _plain(start_response, "405 Method Not Allowed", b"POST a SOAP 1.2 message\n")
        if method == "GET" and path == "/health":
            body = json.dumps(self.health()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if method == "GET" and path.startswith("/schema/"):
            return self._schema(path[len("/schema/"):], start_response)
        for prefix, route in self.extra_routes.items():
            if path.startswith(prefix):
                return route(environ, start_response)
        return _plain(start_response, "404 Not Found", b"not found\n")

    # ------------------------------------------------------------------ SOAP
    def _soap(self, endpoint: SoapEndpoint, environ: dict, start_response: Callable):
        relates_to = None
        attachments: dict = {}
        try:
            media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
            reader = self.readers.get(media_type, read_plain_body)
            limit = self.max_mtom_body if media_type == "multipart/related" else self.max_body
            try:
                data, attachments = reader(environ, limit)
            except RequestTooLarge:
                raise SoapFault(f"request body exceeds the limit of {limit} bytes") from None
            request = parse_envelope(data, self.understood)
            relates_to = request.message_id
            request.attachments = attachments
            request.remote_addr = environ.get("REMOTE_ADDR")
            request.peer_subject = peer_subject(environ)
            if self.security is not None:
                self.security(request)
            op = endpoint.by_action.get(request.action)
            if op is None:
                raise SoapFault(
                    f"action {request.action!r} is not supported at {endpoint.path}",
                    subcode=qn(WSA, "ActionNotSupported"),
                )
            payload = request.payload
            if payload.tag != op.body_tag:
                raise SoapFault(
                    f"action {op.action} expects a {etree.QName(op.body_tag).localname} "
                    f"body, got {{{etree.QName(payload).namespace}}}{etree.QName(payload).localname}"
                )
            if not op.streams_attachments:
                require_complete(attachments)
            try:
                response = op.handler(request)
            except SecurityFault as fault:  # an access-policy refusal (opendmp.policy)
                refused = getattr(self.security, "refused", None)
                if refused is not None:
                    refused(request, fault)
                raise
            require_complete(attachments)
        except SoapFault as fault:
            close_attachments(attachments)
            return _fault(start_response, fault, relates_to)
        except Exception:  # never answer an HTML 500 to a SOAP client
            close_attachments(attachments)
            log.exception("unhandled error in %s", endpoint.path)
            return _fault(
                start_response,
                SoapFault("internal error while processing the request", code="Receiver"),
                relates_to,
            )
        body = envelope_chunks(response.action, relates_to, response.body)
        if response.attachments is None:
            signer = getattr(self.security, "sign_response", None)
            if isinstance(response.body, (bytes, bytearray)) or signer is not None:
                # in memory already: one piece with its length (one send(), not chunked)
                data = b"".join(body)
                if signer is not None:
                    data = signer(data)  # WSS signature over Body + Timestamp (xua)
                body = [data]
                headers = [("Content-Type", _soap_content_type(response.action)),
                           ("Content-Length", str(len(data)))]
            else:
                body = coalesce(body)
                headers = [("Content-Type", _soap_content_type(response.action))]
            start_response("200 OK", headers)
        else:  # MTOM/XOP (SOAP 1.2 MTOM §3): length known from the part sizes, body streamed
            ctype, length, body = mtom_message(b"".join(body), response.attachments,
                                               action=response.action)
            start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(length))])
        return _closing(body, attachments) if attachments else body

    # ------------------------------------------------------------------ WSDL and schemas
    def _wsdl(self, endpoint: SoapEndpoint, environ: dict, start_response: Callable):
        if endpoint.wsdl is None:
            return _plain(start_response, "404 Not Found", b"no WSDL for this endpoint\n")
        doc = etree.parse(str(endpoint.wsdl), etree.XMLParser(resolve_entities=False, no_network=True))
        here = _own_url(environ) + endpoint.path
        for address in doc.iter("{http://schemas.xmlsoap.org/wsdl/soap12/}address"):
            address.set("location", here)
        body = etree.tostring(doc, xml_declaration=True, encoding="UTF-8")
        start_response("200 OK", [("Content-Type", "text/xml; charset=UTF-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _schema(self, rel: str, start_response: Callable):
        target = (self.schema_dir / rel).resolve()
        if not target.is_file() or self.schema_dir not in target.parents:
            return _plain(start_response, "404 Not Found", b"no such schema\n")
        body = target.read_bytes()
        ctype = "text/xml" if target.suffix in (".xsd", ".wsdl", ".xml") else (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]


def _closing(body: Iterable[bytes], attachments: dict):
    """Stream ``body``, then close the request's spooled attachments (also on abort)."""
    try:
        yield from body
    finally:
        close_attachments(attachments)


def _soap_content_type(action: str) -> str:
    return f'application/soap+xml; charset=UTF-8; action="{action}"'


def _fault(start_response: Callable, fault: SoapFault, relates_to: str | None):
    body = fault_envelope(fault, relates_to)
    status = "400 Bad Request" if fault.http_status == 400 else "500 Internal Server Error"
    start_response(status, [("Content-Type", _soap_content_type(fault.action)),
                            ("Content-Length", str(len(body)))])
    return [body]


def _plain(start_response: Callable, status: str, body: bytes):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _own_url(environ: dict) -> str:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
    return f"{scheme}://{host}"


def peer_subject(environ: dict) -> str | None:
    """The TLS client certificate subject, when gunicorn terminated mutual TLS (deps.md §7)."""
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    return ",".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
