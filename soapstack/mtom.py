"""MTOM/XOP for SOAP 1.2: streaming reader, XOP resolution and streaming writer.

Standards: W3C XOP 1.0 (2005) §3-§4 (xop:Include, the XOP package), SOAP 1.2 MTOM
(W3C Rec. 2005) §3 (HTTP serialization), RFC 2046 §5.1 and RFC 2387 (multipart/related,
``type``/``start``/``start-info``), RFC 2045 §6 (Content-Transfer-Encoding), RFC 2392
(``cid:`` URLs), ITI TF-2x Appendix V (IHE web services: MTOM for ITI-41/ITI-43).

Design (../shared/research/deps.md §4): python-multipart's streaming
``MultipartParser`` finds the delimiters; everything MTOM-specific is here. Bodies are
read in 64 KiB chunks and never held whole: the root (SOAP) part is kept in memory up
to ``max_root`` bytes, every other part is spooled to a ``SpooledTemporaryFile``
(memory up to 1 MiB, then disk) while its size is counted; its SHA-1 is computed only
if asked for. Attachment bytes never go into an lxml text node: :func:`resolve_xop` maps
each ``xop:Include`` to an :class:`Attachment`, and callers stream from it.

:class:`MtomParser` is I/O-free (bytes in, ``(root, attachments)`` out), so the same
code serves the server and the client (:mod:`soapstack.client`), and tests can feed it
byte by byte. Two ``SoapApplication`` readers drive it: :func:`read_mtom` reads the whole
body first; :func:`open_mtom` (the default) returns once the root part is read, and an
operation that declares ``streams_attachments`` (ITI-41) takes each attachment's bytes
as they arrive, straight into its own storage, with no temporary copy; it calls
:func:`require_complete` before making anything permanent, so a truncated or malformed
message still leaves nothing behind.
"""
from __future__ import annotations

import binascii
import collections
import hashlib
import io
import secrets
import tempfile
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, NamedTuple
from urllib.parse import quote, unquote

import python_multipart.multipart as pm
from lxml import etree

from .envelope import RequestTooLarge, SoapFault
from .namespaces import XOP, qn

#: wsgi.input read size (deps.md §4 measured 64 KiB reads).
READ_SIZE = 64 * 1024
#: outgoing pieces are joined up to this size before a WSGI server writes them: it makes
#: one send() per piece (gunicorn: one ``sendall`` each), so an ITI-43 answer of a small
#: document goes out in one system call instead of four (:func:`coalesce`).
COALESCE_BYTES = 64 * 1024
#: the SOAP (root) part is parsed in memory; beyond this the request is refused.
DEFAULT_MAX_ROOT = 16 * 1024 * 1024
#: an attachment stays in memory up to this size, then rolls over to a temporary file.
DEFAULT_SPOOL_MEMORY = 1024 * 1024
#: each part costs a spool object, so a body of many tiny parts is refused early.
DEFAULT_MAX_PARTS = 1000
#: MIME headers per part (python-multipart's default of 8 is tight for some senders).
MAX_PART_HEADERS = 16
#: text before the first delimiter (RFC 2046 preamble) that we are willing to skip.
MAX_PREAMBLE = 64 * 1024
#: a quoted-printable line longer than this (RFC 2045 says 76) is refused.
MAX_QP_LINE = 64 * 1024

SOAP12_MEDIA = "application/soap+xml"
XOP_MEDIA = "application/xop+xml"
_ROOT_MEDIA = (XOP_MEDIA, SOAP12_MEDIA)  # application/soap+xml root: SwA-style senders
_IDENTITY_CTE = ("binary", "8bit", "7bit")
XOP_INCLUDE = qn(XOP, "Include")


class MtomError(SoapFault):
    """A malformed MTOM/XOP message: a SOAP 1.2 ``env:Sender`` fault with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="Sender")


# ---------------------------------------------------------------- MIME header values

def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; k=v; k="quoted; v"`` -> (lower-case media type, {lower-case k: v}).

    Quoted strings may contain ``;`` and backslash escapes (RFC 2045 §5.1). Malformed
    parameters are skipped rather than guessed at.
    """
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq == -1:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            buf = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(rest[i])
                i += 1
            i += 1  # closing quote
            val = "".join(buf)
            semi = rest.find(";", i)
            i = n if semi == -1 else semi
        else:
            semi = rest.find(";", i)
            end = n if semi == -1 else semi
            val = rest[i:end].strip()
            i = end
        if key and key not in params:
            params[key] = val
    return media.strip().lower(), params


def _media(value: str | None) -> str:
    return value.split(";")[0].strip().lower() if value else ""


def normalize_content_id(value: str) -> str:
    """``<id@host>`` (Content-ID header or ``start`` parameter) -> ``id@host``."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


# ---------------------------------------------------------------- attachments

class Attachment:
    """A received MIME part other than the root: its bytes plus what XDS checks.

    ``sha1`` (hex) and ``size`` are those of the *decoded* content, i.e. what ITI-41
    compares with the DocumentEntry ``hash`` and ``size`` slots; ``sha1`` is computed
    when first asked for (from the spooled bytes), not while the part is received.

    A part received by :func:`open_mtom` may still be arriving: :meth:`chunks` then
    yields what was spooled so far and the rest straight from the request body as the
    consumer reads it (no temporary copy); such a part is read once.
    """

    def __init__(self, content_id: str, content_type: str | None, size: int = 0,
                 sha1: str | None = None, file: BinaryIO | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.content_id = content_id
        self.content_type = content_type
        #: the spooled content (None when nothing was spooled).
        self.file = file
        #: all MIME headers of the part, names in lower case.
        self.headers = headers if headers is not None else {}
        self._size = size
        self._sha1 = sha1 or None
        self._part: _Part | None = None          # set while the parser receives the part
        self._pump: Callable[[], bool] | None = None

    def __repr__(self) -> str:
        return f"Attachment({self.content_id!r}, {self.content_type!r}, size={self.size})"

    @property
    def size(self) -> int:
        return self._part.size if self._part is not None else self._size

    @property
    def complete(self) -> bool:
        """Every byte of the part has been received."""
        return self._part is None or self._part.complete

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            h = hashlib.sha1()
            for block in self.chunks():
                h.update(block)
            self._sha1 = h.hexdigest()
        return self._sha1

    def _check_spooled(self) -> None:
        part = self._part
        if part is not None and (part.streamed or not part.complete):
            raise MtomError(f"{part.where} is being received or was streamed already: "
                            "it can be read once, as it arrives")

    def open(self) -> BinaryIO:
        """The content as a binary file object, rewound to its start."""
        self._check_spooled()
        if self.file is None:
            self.file = io.BytesIO()
        self.file.seek(0)
        return self.file

    def chunks(self, size: int = READ_SIZE) -> Iterator[bytes]:
        """Stream the content from the start, ``size`` bytes at a time (spooled bytes),
        or as it arrives for a part still being received."""
        part = self._part
        if part is not None and not (part.complete and not part.streamed):
            return self._live_chunks(part, size)
        return self._spooled_chunks(size)

    def _spooled_chunks(self, size: int) -> Iterator[bytes]:
        f = self.open()
        while True:
            block = f.read(size)
            if not block:
                return
            yield block

    def _live_chunks(self, part: "_Part", size: int) -> Iterator[bytes]:
        if part.streamed:
            raise MtomError(f"{part.where} was streamed already: it can be read once")
        part.streamed = True
        try:
            if self.file is not None:       # what arrived before the consumer asked
                f, self.file = self.file, None
                f.seek(0)
                try:
                    while block := f.read(size):
                        yield block
                finally:
                    f.close()
            part.queue = collections.deque()
            while True:
                while part.queue:
                    yield part.queue.popleft()
                if part.complete:
                    return
                if self._pump is None or not self._pump():
                    raise MtomError("truncated multipart body: it ends inside "
                                    f"{part.where}")
        finally:
            part.queue = None
            if not part.complete:
                part.discard = True         # abandoned: the rest is read and dropped

    def read(self) -> bytes:
        """The whole content in memory: only for parts known to be small."""
        return b"".join(self.chunks())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def close_attachments(attachments: dict | Iterable | None) -> None:
    """Close every :class:`Attachment` of a mapping or iterable (idempotent)."""
    close = getattr(attachments, "close", None)
    if close is not None and not isinstance(attachments, Attachment):
        close()
        return
    if not attachments:
        return
    values = attachments.values() if isinstance(attachments, dict) else attachments
    for att in values:
        close = getattr(att, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------- transfer decoders

class _Identity:
    def decode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Base64:
    """RFC 2045 §6.8, streaming: line breaks anywhere, groups split across chunks."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending = b""
        self.padded = False

    def decode(self, data: bytes) -> bytes:
        data = data.translate(None, b" \t\r\n")
        if not data:
            return b""
        if self.padded:
            raise MtomError(f"base64 data continues after its final padding in {self.where}")
        buf = self.pending + data if self.pending else data
        n = len(buf) - len(buf) % 4
        self.pending = buf[n:]
        if not n:
            return b""
        group = buf[:n]
        try:
            out = binascii.a2b_base64(group, strict_mode=True)
        except binascii.Error as exc:
            raise MtomError(f"invalid base64 in {self.where}: {exc}") from None
        self.padded = group.endswith(b"=")
        return out

    def flush(self) -> bytes:
        if self.pending:
            raise MtomError(f"truncated base64 in {self.where} (length not a multiple of 4)")
        return b""


class _QuotedPrintable:
    """RFC 2045 §6.7, decoded line by line (a soft break never spans the cut)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending = b""

    def decode(self, data: bytes) -> bytes:
        buf = self.pending + data
        cut = buf.rfind(b"\n") + 1
        if not cut:
            if len(buf) > MAX_QP_LINE:
                raise MtomError(f"quoted-printable line longer than {MAX_QP_LINE} bytes in {self.where}")
            self.pending = buf
            return b""
        self.pending = buf[cut:]
        return binascii.a2b_qp(buf[:cut])

    def flush(self) -> bytes:
        out, self.pending = binascii.a2b_qp(self.pending), b""
        return out


def _decoder(cte: str, where: str):
    if cte in _IDENTITY_CTE:
        return _Identity()
    if cte == "base64":
        return _Base64(where)
    if cte == "quoted-printable":
        return _QuotedPrintable(where)
    raise MtomError(f"unsupported Content-Transfer-Encoding {cte!r} in {where} "
                    "(binary, 8bit, 7bit, base64 or quoted-printable)")


# ---------------------------------------------------------------- the parser

class _Part:
    __slots__ = ("index", "headers", "field", "value", "content_id", "is_root",
                 "decoder", "buffer", "attachment", "size", "complete", "streamed", "queue",
                 "discard")

    def __init__(self, index: int) -> None:
        self.index = index
        self.headers: dict[str, str] = {}
        self.field = bytearray()
        self.value = bytearray()
        self.content_id: str | None = None
        self.is_root = False
        self.decoder = None
        self.buffer: bytearray | None = None
        self.attachment: Attachment | None = None
        self.size = 0
        self.complete = False
        self.streamed = False                       # a consumer took the bytes as they came
        self.queue: collections.deque | None = None  # bytes for that consumer
        self.discard = False                        # consumer gone: drop the rest

    @property
    def where(self) -> str:
        return f"MIME part <{self.content_id}>" if self.content_id else f"MIME part #{self.index + 1}"


class MtomParser:
    """Push parser for one ``multipart/related`` MTOM/XOP message (no I/O).

    ``feed(chunk)`` any number of times, then ``finish()`` -> ``(root_bytes,
    {content_id: Attachment})``. Errors raise :class:`MtomError` (a Sender
    :class:`SoapFault`); more than ``limit`` body bytes raise :class:`RequestTooLarge`.
    On any error, or if the caller calls :meth:`abort`, every spooled part is closed.
    """

    def __init__(self, content_type: str, *, limit: int | None = None,
                 max_root: int = DEFAULT_MAX_ROOT, spool_dir: str | None = None,
                 spool_memory: int = DEFAULT_SPOOL_MEMORY,
                 max_parts: int = DEFAULT_MAX_PARTS) -> None:
        media, params = parse_content_type(content_type or "")
        if media != "multipart/related":
            raise MtomError(f"expected a multipart/related (MTOM) message, got {media or 'no content type'}")
        boundary = params.get("boundary", "")
        if not boundary:
            raise MtomError("multipart/related Content-Type without a boundary parameter")
        if len(boundary) > pm.MAX_BOUNDARY_LENGTH or not boundary.isascii():
            raise MtomError(f"invalid multipart boundary (RFC 2046 §5.1.1: up to 70 ASCII "
                            f"characters; {pm.MAX_BOUNDARY_LENGTH} accepted): {boundary[:80]!r}")
        kind = _media(params.get("type"))
        if kind and kind not in _ROOT_MEDIA:
            raise MtomError(f'multipart/related type="{params["type"]}" is not SOAP 1.2 MTOM '
                            f'(expected type="{XOP_MEDIA}")')
        start_info = _media(params.get("start-info"))
        if kind == XOP_MEDIA and start_info and start_info != SOAP12_MEDIA:
            raise MtomError(f'start-info="{params["start-info"]}": the XOP package must carry '
                            f"{SOAP12_MEDIA} (SOAP 1.2 MTOM §3)")
        self.boundary = boundary.encode("latin-1")
        self.start = normalize_content_id(params["start"]) if params.get("start") else None
        self.limit = limit
        self.max_root = max_root
        self.spool_dir = spool_dir
        self.spool_memory = spool_memory
        self.max_parts = max_parts

        self.received = 0
        self._preamble = b""  # the tail of the body seen before the first delimiter
        self._skipped = 0  # preamble bytes dropped so far
        self._cids: set[str] = set()
        self._started = False
        self._ended = False
        self._failed = False
        self._parts: list[_Part] = []
        self._part: _Part | None = None
        self._root: bytearray | None = None
        self.root_complete = False
        self.attachments: dict[str, Attachment] = {}
        #: reads more of the body into this parser (set by :class:`StreamingAttachments`),
        #: so that a part still arriving can be streamed to its consumer.
        self.pump: Callable[[], bool] | None = None
        self._parser = pm.MultipartParser(
            self.boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=MAX_PART_HEADERS,
        )

    # ------------------------------------------------------------ public API
    def feed(self, data: bytes) -> None:
        """Parse the next bytes of the body."""
        if self._failed:
            raise MtomError("the MTOM message was already refused")
        if not data:
            return
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self.abort()
            raise RequestTooLarge(self.received)
        try:
            if not self._started:
                data = self._skip_preamble(data)
                if not data:
                    return
            if self._ended:  # RFC 2046 epilogue: ignored
                return
            self._parser.write(data)
        except pm.MultipartParseError as exc:
            self.abort()
            raise MtomError(f"malformed multipart body: {exc}") from None
        except BaseException:
            self.abort()
            raise

    def finish(self) -> tuple[bytes, dict[str, Attachment]]:
        """Check the message is complete and return ``(root_bytes, attachments)``."""
        try:
            if not self._started:
                raise MtomError(f"no MIME part delimited by boundary {self.boundary.decode('latin-1')!r} "
                                "in the body (the boundary parameter does not match the body)")
            if not self._ended:
                raise MtomError("truncated multipart body: the closing boundary "
                                f"--{self.boundary.decode('latin-1')}-- never came")
            if self._root is None:
                if self.start is not None:
                    raise MtomError(f"start parameter names <{self.start}>, but no MIME part has "
                                    "that Content-ID (missing root part)")
                raise MtomError("multipart body without any part (missing root part)")
        except BaseException:
            self.abort()
            raise
        return bytes(self._root), self.attachments

    def abort(self) -> None:
        """Release every spooled part (after an error, or when the caller gives up)."""
        self._failed = True
        for part in self._parts:
            if part.attachment is not None:
                part.attachment.close()

    # ------------------------------------------------------------ preamble
    def _skip_preamble(self, data: bytes) -> bytes:
        """Drop any RFC 2046 preamble; return the data from the first delimiter on.

        The delimiter must start a line (or the body). Only its length plus one byte
        of unmatched input is kept between calls, so a long preamble costs no memory.
        """
        buf = self._preamble + data
        delim = b"--" + self.boundary
        pos = 0
        while True:
            at = buf.find(delim, pos)
            if at == -1:
                break
            if (at == 0 and self._skipped == 0) or (at > 0 and buf[at - 1] == 0x0A):
                self._started = True
                self._preamble = b""
                return buf[at:]
            pos = at + 1
        drop = len(buf) - (len(delim) + 1)
        if drop > 0:
            self._skipped += drop
            buf = buf[drop:]
        if self._skipped > MAX_PREAMBLE:
            raise MtomError(f"no MIME part delimited by boundary {self.boundary.decode('latin-1')!r} "
                            f"in the first {MAX_PREAMBLE} bytes of the body")
        self._preamble = buf
        return b""

    # ------------------------------------------------------------ callbacks
    def _on_part_begin(self) -> None:
        if len(self._parts) >= self.max_parts:
            raise MtomError(f"more than {self.max_parts} MIME parts")
        self._part = _Part(len(self._parts))
        self._parts.append(self._part)

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.value += data[start:end]

    def _on_header_end(self) -> None:
        part = self._part
        name = bytes(part.field).decode("latin-1").strip().lower()
        value = bytes(part.value).decode("latin-1").strip()
        part.field.clear()
        part.value.clear()
        if name in part.headers and name in ("content-id", "content-type", "content-transfer-encoding"):
            raise MtomError(f"{part.where} has two {name} headers")
        part.headers[name] = value

    def _on_headers_finished(self) -> None:
        part = self._part
        cid = part.headers.get("content-id")
        part.content_id = normalize_content_id(cid) if cid else None
        if self._root is None and (
            part.content_id == self.start if self.start is not None else part.index == 0
        ):
            part.is_root = True
        if part.content_id is not None:
            if part.content_id in self._cids:
                raise MtomError(f"duplicate Content-ID <{part.content_id}> in the MTOM message")
            self._cids.add(part.content_id)
        elif not part.is_root:
            raise MtomError(f"{part.where} has no Content-ID, so no xop:Include can reference it")
        cte = part.headers.get("content-transfer-encoding", "binary").strip().lower() or "binary"
        part.decoder = _decoder(cte, part.where)
        if part.is_root:
            self._check_root_type(part)
            self._root = part.buffer = bytearray()
        else:
            part.attachment = Attachment(part.content_id, part.headers.get("content-type"),
                                         headers=dict(part.headers))
            part.attachment._part = part
            part.attachment._pump = self.pump
            self.attachments[part.content_id] = part.attachment

    def _check_root_type(self, part: _Part) -> None:
        ctype = part.headers.get("content-type")
        if not ctype:
            raise MtomError(f"the root {part.where} has no Content-Type "
                            f'(expected {XOP_MEDIA}; type="{SOAP12_MEDIA}")')
        media, params = parse_content_type(ctype)
        if media not in _ROOT_MEDIA:
            raise MtomError(f"the root {part.where} is {media}, not {XOP_MEDIA} carrying "
                            f"{SOAP12_MEDIA} (XOP 1.0 §4.1, SOAP 1.2 MTOM §3)")
        inner = _media(params.get("type"))
        if media == XOP_MEDIA and inner and inner != SOAP12_MEDIA:
            raise MtomError(f'the root {part.where} is {XOP_MEDIA}; type="{params["type"]}", '
                            f"not a SOAP 1.2 envelope ({SOAP12_MEDIA})")

    def _write(self, data: bytes) -> None:
        if not data:
            return
        part = self._part
        if part.is_root:
            if len(part.buffer) + len(data) > self.max_root:
                raise MtomError(f"the SOAP part of the MTOM message exceeds {self.max_root} bytes")
            part.buffer += data
        elif part.queue is not None:
            part.queue.append(data)
        elif not part.discard:
            att = part.attachment
            if att.file is None:
                att.file = tempfile.SpooledTemporaryFile(max_size=self.spool_memory,
                                                         dir=self.spool_dir)
            att.file.write(data)
        part.size += len(data)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._write(self._part.decoder.decode(data[start:end]))

    def _on_part_end(self) -> None:
        part = self._part
        self._write(part.decoder.flush())
        part.complete = True
        if part.is_root:
            self.root_complete = True
        self._part = None

    def _on_end(self) -> None:
        self._ended = True


# ---------------------------------------------------------------- WSGI reader

def _content_length(environ: dict, limit: int) -> int | None:
    length = environ.get("CONTENT_LENGTH")
    if length in (None, ""):
        return None
    try:
        remaining = int(length)
    except ValueError:
        raise SoapFault("invalid Content-Length") from None
    if remaining < 0:
        raise SoapFault("invalid Content-Length")
    if remaining > limit:
        raise RequestTooLarge(remaining)
    return remaining


def read_mtom(environ: dict, limit: int, *, max_root: int = DEFAULT_MAX_ROOT,
              spool_dir: str | None = None, spool_memory: int = DEFAULT_SPOOL_MEMORY,
              max_parts: int = DEFAULT_MAX_PARTS) -> tuple[bytes, dict[str, Attachment]]:
    """``SoapApplication`` reader for ``multipart/related``: ``(envelope, attachments)``.

    Reads ``wsgi.input`` in 64 KiB blocks, exactly ``CONTENT_LENGTH`` bytes when it is
    given, to end of stream otherwise. Bind the keyword options with
    ``functools.partial`` to configure a reader. The caller owns the returned
    attachments and must :meth:`Attachment.close` them.
    """
    remaining = _content_length(environ, limit)
    parser = MtomParser(environ.get("CONTENT_TYPE", ""), limit=limit, max_root=max_root,
                        spool_dir=spool_dir, spool_memory=spool_memory, max_parts=max_parts)
    stream = environ["wsgi.input"]
    try:
        while remaining is None or remaining > 0:
            chunk = stream.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            parser.feed(chunk)
        return parser.finish()
    except BaseException:
        parser.abort()
        raise


class StreamingAttachments(Mapping[str, Attachment]):
    """The attachments of an MTOM request whose body is still being read (:func:`open_mtom`).

    Looking up a Content-ID reads the body until that part's headers have arrived
    (spooling the parts it passes, as :func:`read_mtom` does); the part's bytes then flow
    to whoever iterates :meth:`Attachment.chunks`, as they arrive. :meth:`finish` reads the
    rest of the body and raises :class:`MtomError` if the message is malformed or
    truncated: a consumer that acts on the bytes calls it (:func:`require_complete`)
    before making anything permanent. Iterating the mapping finishes it first.
    """

    def __init__(self, parser: MtomParser, stream, remaining: int | None) -> None:
        self._parser = parser
        self._stream = stream
        self._remaining = remaining
        self._finished = False
        parser.pump = self.pump

    def pump(self) -> bool:
        """Feed the next block of the body to the parser; False at its end."""
        if self._remaining is not None and self._remaining <= 0:
            return False
        chunk = self._stream.read(READ_SIZE if self._remaining is None
                                  else min(READ_SIZE, self._remaining))
        if not chunk:
            return False
        if self._remaining is not None:
            self._remaining -= len(chunk)
        try:
            self._parser.feed(chunk)
        except RequestTooLarge:
            self._finished = True
            raise SoapFault(f"request body exceeds the limit of {self._parser.limit} "
                            "bytes") from None
        except BaseException:
            self._finished = True
            raise
        return True

    def read_root(self) -> bytes:
        """Read until the root (SOAP) part is complete; its bytes."""
        while not self._parser.root_complete:
            if not self.pump():
                self.finish()                  # raises the precise MtomError
                raise MtomError("multipart body without a complete root part")
        return bytes(self._parser._root)

    def __getitem__(self, content_id: str) -> Attachment:
        attachments = self._parser.attachments
        while content_id not in attachments and not self._finished:
            if self._parser._ended or not self.pump():
                break
        return attachments[content_id]

    def __iter__(self) -> Iterator[str]:
        self.finish()
        return iter(self._parser.attachments)

    def __len__(self) -> int:
        self.finish()
        return len(self._parser.attachments)

    def finish(self) -> None:
        """Read the rest of the body; raise :class:`MtomError` unless the message is whole."""
        if self._finished:
            if self._parser._failed:
                raise MtomError("the MTOM message was refused")
            return
        try:
            while self.pump():
                pass
            self._parser.finish()
        finally:
            self._finished = True

    def close(self) -> None:
        self._finished = True
        self._parser.abort()


def open_mtom(environ: dict, limit: int, *, max_root: int = DEFAULT_MAX_ROOT,
              spool_dir: str | None = None, spool_memory: int = DEFAULT_SPOOL_MEMORY,
              max_parts: int = DEFAULT_MAX_PARTS) -> tuple[bytes, StreamingAttachments]:
    """``SoapApplication`` reader for ``multipart/related`` that returns as soon as the
    root part is read: ``(envelope, attachments)`` where the attachments are a
    :class:`StreamingAttachments` reading the rest of ``wsgi.input`` on demand. The caller
    must :meth:`~StreamingAttachments.finish` (or close) them."""
    remaining = _content_length(environ, limit)
    parser = MtomParser(environ.get("CONTENT_TYPE", ""), limit=limit, max_root=max_root,
                        spool_dir=spool_dir, spool_memory=spool_memory, max_parts=max_parts)
    attachments = StreamingAttachments(parser, environ["wsgi.input"], remaining)
    try:
        return attachments.read_root(), attachments
    except BaseException:
        attachments.close()
        raise


def require_complete(attachments: Mapping[str, Attachment] | None) -> None:
    """Make sure the whole MTOM message was received and is well formed (a no-op for
    attachments read in full already); raises :class:`MtomError` otherwise."""
    finish = getattr(attachments, "finish", None)
    if finish is not None:
        finish()


# ---------------------------------------------------------------- XOP resolution

def cid_from_href(href: str | None) -> str:
    """The Content-ID an ``xop:Include/@href`` names (RFC 2392 ``cid:`` URL, %-decoded)."""
    href = (href or "").strip()
    if not href[:4].lower() == "cid:":
        raise MtomError(f"xop:Include href must be a cid: URL (XOP 1.0 §3), got {href!r}")
    return href[4:]


def _lookup(href: str | None, attachments: dict[str, Attachment]) -> Attachment:
    raw = cid_from_href(href)
    for candidate in (unquote(raw), raw):  # RFC 2392 %-encoded, or sent as is
        candidate = normalize_content_id(candidate)
        if candidate in attachments:
            return attachments[candidate]
    raise MtomError(f"xop:Include href={href!r} names no MIME part of the message "
                    f"(no Content-ID <{normalize_content_id(unquote(raw))}>)")


def resolve_xop(element: etree._Element, attachments: dict[str, Attachment]
                ) -> dict[etree._Element, Attachment]:
    """Every ``xop:Include`` under ``element`` (itself included) -> its :class:`Attachment`."""
    return {inc: _lookup(inc.get("href"), attachments) for inc in element.iter(XOP_INCLUDE)}


def xop_attachment(element: etree._Element, attachments: dict[str, Attachment]
                   ) -> Attachment | None:
    """The attachment an element's single ``xop:Include`` child names (XOP 1.0 §3).

    For a base64Binary element such as ``xdsb:Document``: returns ``None`` when the
    element has no ``xop:Include`` child (its content is then inline base64), raises
    :class:`MtomError` for more than one, for text beside it, or an unknown cid.
    """
    includes = [c for c in element if c.tag == XOP_INCLUDE]
    if not includes:
        return None
    name = etree.QName(element).localname
    if len(includes) > 1:
        raise MtomError(f"{name} holds {len(includes)} xop:Include elements; XOP allows one")
    text = (element.text or "") + "".join(c.tail or "" for c in element)
    if text.strip() or len([c for c in element if isinstance(c.tag, str)]) > 1:
        raise MtomError(f"{name} mixes an xop:Include with other content")
    return _lookup(includes[0].get("href"), attachments)


# ---------------------------------------------------------------- writer

class OutgoingAttachment(NamedTuple):
    """A part to send: its Content-ID (no brackets), Content-Type, exact size and chunks."""

    content_id: str
    content_type: str
    size: int
    chunks: Iterable[bytes]


#: RFC 3986 characters that stay literal in a cid: URL; ":" "%" "&" "'" ... are encoded.
_CID_SAFE = "@!$()*+,;=-._~"


def cid_href(content_id: str) -> str:
    """``cid:`` URL for a Content-ID (RFC 2392: %-encode what a URL may not hold)."""
    return "cid:" + quote(content_id, safe=_CID_SAFE)


def xop_include(content_id: str) -> str:
    """The ``<xop:Include .../>`` text that references ``content_id``."""
    return f'<xop:Include xmlns:xop="{XOP}" href="{cid_href(content_id)}"/>'


def xop_include_element(content_id: str) -> etree._Element:
    """The same as an lxml element, for builders that work on trees."""
    el = etree.Element(XOP_INCLUDE, nsmap={"xop": XOP})
    el.set("href", cid_href(content_id))
    return el


def new_content_id(label: str = "part") -> str:
    """A fresh, globally unique Content-ID (``label.<random>@opendmp``)."""
    return f"{label}.{secrets.token_hex(16)}@opendmp"


def file_chunks(fileobj: BinaryIO, size: int = READ_SIZE) -> Iterator[bytes]:
    """Read a binary file in ``size`` blocks, closing it when done or abandoned."""
    try:
        while True:
            block = fileobj.read(size)
            if not block:
                return
            yield block
    finally:
        fileobj.close()


def _header_safe(value: str, what: str, forbid: str = "") -> str:
    if any(c in value for c in "\r\n\0" + forbid) or not value.strip():
        raise ValueError(f"invalid {what} for a MIME header: {value!r}")
    return value


def mtom_message(root: bytes | Iterable[bytes], attachments: Iterable[tuple] = (), *,
                 action: str | None = None, boundary: str | None = None,
                 root_content_id: str | None = None) -> tuple[str, int, Iterator[bytes]]:
    """Serialize a SOAP 1.2 envelope and its parts as MTOM (SOAP 1.2 MTOM §3).

    ``attachments`` are :class:`OutgoingAttachment` or plain ``(content_id,
    content_type, size, chunks)`` tuples. Returns ``(content_type_header,
    content_length, body_iterator)``: the length is computed from the sizes, so the
    body streams with constant memory. A part whose chunks do not add up to its
    declared size raises ``ValueError`` mid-stream (the framing cannot be fixed
    once sent; the server then drops the connection and the peer sees truncation).
    """
    root_bytes = root if isinstance(root, (bytes, bytearray)) else b"".join(root)
    parts = [OutgoingAttachment(*a) for a in attachments]
    boundary = boundary or f"MIMEBoundary_{secrets.token_hex(24)}"
    _header_safe(boundary, "boundary", '"')
    root_cid = root_content_id or new_content_id("root")
    seen = {_header_safe(root_cid, "Content-ID", "<> \t")}
    for p in parts:
        _header_safe(p.content_id, "Content-ID", "<> \t")
        _header_safe(p.content_type, "Content-Type")
        if p.content_id in seen:
            raise ValueError(f"duplicate Content-ID {p.content_id!r}")
        if p.size < 0:
            raise ValueError(f"negative size for {p.content_id!r}")
        seen.add(p.content_id)
    delim = f"--{boundary}\r\n".encode("latin-1")
    head = delim + (
        f'Content-Type: {XOP_MEDIA}; charset=UTF-8; type="{SOAP12_MEDIA}"\r\n'
        "Content-Transfer-Encoding: binary\r\n"
        f"Content-ID: <{root_cid}>\r\n\r\n"
    ).encode("latin-1") + bytes(root_bytes)
    part_heads = [
        b"\r\n" + delim + (
            f"Content-Type: {p.content_type}\r\n"
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{p.content_id}>\r\n\r\n"
        ).encode("latin-1")
        for p in parts
    ]
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    length = len(head) + sum(len(h) + p.size for h, p in zip(part_heads, parts)) + len(tail)
    ctype = (f'multipart/related; type="{XOP_MEDIA}"; boundary="{boundary}"; '
             f'start="<{root_cid}>"; start-info="{SOAP12_MEDIA}"')
    if action:
        ctype += f'; action="{_header_safe(action, "action", chr(34))}"'

    def pieces() -> Iterator[bytes]:
        yield head
        for h, p in zip(part_heads, parts):
            yield h
            sent = 0
            for chunk in p.chunks:
                if not chunk:
                    continue
                sent += len(chunk)
                if sent > p.size:
                    raise ValueError(f"part <{p.content_id}> yields more than its declared "
                                     f"{p.size} bytes")
                yield bytes(chunk)
            if sent != p.size:
                raise ValueError(f"part <{p.content_id}> yielded {sent} bytes, "
                                 f"declared {p.size}")
        yield tail

    def body() -> Iterator[bytes]:
        try:
            yield from coalesce(pieces())
        finally:
            for p in parts:
                close = getattr(p.chunks, "close", None)
                if close is not None:
                    close()

    return ctype, length, body()


def coalesce(pieces: Iterable[bytes], limit: int = COALESCE_BYTES) -> Iterator[bytes]:
    """``pieces`` with consecutive small ones joined, as long as the joined piece stays
    within ``limit`` bytes; a piece of ``limit`` bytes or more passes through uncopied.
    Memory: at most ``limit`` bytes held back, so large bodies still stream."""
    held: list[bytes] = []
    size = 0
    for piece in pieces:
        n = len(piece)
        if not n:
            continue
        if held and size + n > limit:
            yield held[0] if len(held) == 1 else b"".join(held)
            held, size = [], 0
        if n >= limit:
            yield piece
        else:
            held.append(piece)
            size += n
    if held:
        yield held[0] if len(held) == 1 else b"".join(held)


#: the name the repository actor uses for ITI-43 answers; the same function.
mtom_response = mtom_message
