"""Encryption at rest of repository documents: the file format, as pure logic (no I/O).

Envelope encryption: every document is sealed under a fresh random 256-bit *data key*;
the data key is stored in the document's header, wrapped by a *master key* (AES key wrap,
RFC 3394) that lives outside the store (``repository.keys``). Rotating the master key
rewrites the key id and wrapped key in each header (bytes 32 .. 105); no document is
re-encrypted.

The body is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015) over
AES-256-GCM: the plaintext is cut into chunks of C bytes, each sealed on its own with a
nonce made of a per-document random prefix and the chunk counter, and associated data
that binds the chunk index and a final-chunk flag. A reader therefore verifies and
releases one chunk at a time in bounded memory, and truncation, reordering, duplication
and splicing of chunks between documents all fail authentication.

File format, version 1 (all integers big-endian)::

    offset size field
       0     8  magic  b"ODMPDOC\\n"
       8     2  format version = 1
      10     2  header size = 160
      12     4  chunk size C: plaintext bytes per chunk (1 .. 16 MiB; default 64 KiB)
      16     8  plaintext size N
      24     8  nonce prefix P, random per document
      32     1  master key id length L (1 .. 32)
      33    32  master key id: L ASCII bytes of [A-Za-z0-9._-], then NUL padding
      65    40  wrapped data key: AES-KW(master key, data key), RFC 3394
     105    36  sealed digest: AES-GCM(data key, P || FFFFFFFF, SHA-1(plaintext), AAD_H)
     141    19  reserved, zero
     160        chunk 0, chunk 1, ... chunk n-1, each AES-GCM(data key, P || i, text_i, AAD_i),
                that is ciphertext_i || 16-byte tag, i as a 32-bit counter

    n      = max(1, ceil(N / C)); every chunk holds C bytes but the last, which holds
             1 .. C bytes (0 only for an empty document, n = 1)
    D      = magic || version || C || P || len(object key) || object key
    AAD_i  = D || "C" || i (64 bits) || final (1 byte: 1 for i = n-1, else 0)
    AAD_H  = D || "H" || N (64 bits)
    file length = 160 + N + 16 n

The object key is the document's name in the store, so a file moved under another
name does not open. The header has a fixed size so that re-wrapping rewrites bytes
32 .. 105 in place, inside the first disk sector. What catches what:

- a changed byte in a chunk: that chunk's tag; in P, C or the object key: every tag;
- chunks reordered, duplicated or taken from another document: the index in AAD_i, the
  data key;
- truncation or extension: the file length, checked before the first byte is served,
  against N, which the sealed digest authenticates; dropping whole chunks and editing
  N: the digest, then the final flag;
- a wrong master key or an altered key id or wrapped key: the RFC 3394 integrity check;
- magic, version, header size and the zero fields are checked literally.

Nonces never repeat: the data key is fresh per document and a counter value is used once
(counter FFFFFFFF is the digest's, so a document has at most 2^32 - 1 chunks, 256 TiB at
64 KiB); the random prefix is the paper's construction and defence in depth.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

MAGIC = b"ODMPDOC\n"
VERSION = 1
HEADER_SIZE = 160
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
KEY_ID_SIZE = 32
WRAPPED_KEY_SIZE = KEY_SIZE + 8
SEALED_DIGEST_SIZE = 20 + TAG_SIZE
#: Counter value reserved for the sealed digest; chunks use 0 .. MAX_CHUNKS - 1.
DIGEST_COUNTER = 0xFFFFFFFF
MAX_CHUNKS = DIGEST_COUNTER
#: Byte range [start, end) of the header fields that a re-wrap replaces.
REWRAP_SPAN = (32, 105)

KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")

_HEADER = struct.Struct(">8sHHIQ8sB32s40s36s19s")
assert _HEADER.size == HEADER_SIZE
_RESERVED = bytes(19)


# ---------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of every document store error."""


class StoreCorruption(StoreError):
    """A stored document failed an integrity check: tampered, truncated, or under the wrong
    key. None of its unverified bytes were released."""


class MissingKey(StoreCorruption):
    """The document's master key id is not in the keyring."""

    def __init__(self, key_id: str, message: str | None = None) -> None:
        super().__init__(message or f"master key {key_id!r} is not in the keyring")
        self.key_id = key_id


class StoreWriteError(StoreError):
    """A document could not be written (disk full, I/O error); nothing of it was kept."""


# ---------------------------------------------------------------------------- header


def check_key_id(key_id: str) -> str:
    """Return ``key_id`` if it is a valid master key id (1-32 of ``[A-Za-z0-9._-]``)."""
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
        raise ValueError(f"invalid master key id {key_id!r}: 1-32 characters of A-Z a-z 0-9 . _ -")
    return key_id


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a document of ``size`` plaintext bytes."""
    return max(1, -(-size // chunk_size))


def sealed_size(size: int, chunk_size: int) -> int:
    """Length of the sealed body (without the header) of ``size`` plaintext bytes."""
    return size + TAG_SIZE * chunk_count(size, chunk_size)


@dataclass(frozen=True)
class Header:
    """The fixed-size header of a stored document (see the module docstring)."""

    chunk_size: int
    plaintext_size: int
    nonce_prefix: bytes
    key_id: str
    wrapped_key: bytes
    sealed_digest: bytes = bytes(SEALED_DIGEST_SIZE)
    version: int = VERSION

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.plaintext_size, self.chunk_size)

    @property
    def file_size(self) -> int:
        """The exact length of the file this header belongs to."""
        return HEADER_SIZE + sealed_size(self.plaintext_size, self.chunk_size)

    def pack(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return _HEADER.pack(MAGIC, self.version, HEADER_SIZE, self.chunk_size,
                            self.plaintext_size, self.nonce_prefix, len(kid),
                            kid.ljust(KEY_ID_SIZE, b"\0"), self.wrapped_key,
                            self.sealed_digest, _RESERVED)

    @classmethod
    def parse(cls, raw: bytes) -> "Header":
        """Parse and check a header; :class:`StoreCorruption` when it is not one."""
        if len(raw) != HEADER_SIZE:
            raise StoreCorruption(f"header is {len(raw)} bytes, expected {HEADER_SIZE}")
        (magic, version, hsize, csize, size, prefix, kid_len, kid, wrapped, digest,
         reserved) = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise StoreCorruption("not an OpenDMP document (bad magic)")
        if version != VERSION or hsize != HEADER_SIZE:
            raise StoreCorruption(f"unsupported document format version {version}")
        if not 1 <= csize <= MAX_CHUNK_SIZE:
            raise StoreCorruption(f"bad chunk size {csize}")
        if chunk_count(size, csize) > MAX_CHUNKS:
            raise StoreCorruption(f"bad plaintext size {size}")
        if reserved != _RESERVED or not 1 <= kid_len <= KEY_ID_SIZE or any(kid[kid_len:]):
            raise StoreCorruption("malformed header")
        try:
            key_id = check_key_id(kid[:kid_len].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise StoreCorruption("malformed master key id in header") from None
        return cls(csize, size, prefix, key_id, wrapped, digest, version)

    def with_key(self, key_id: str, wrapped_key: bytes) -> "Header":
        return replace(self, key_id=check_key_id(key_id), wrapped_key=wrapped_key)


def _domain(chunk_size: int, nonce_prefix: bytes, object_key: str) -> bytes:
    name = object_key.encode("ascii")
    if not 1 <= len(name) <= 255:
        raise ValueError("object key must be 1-255 ASCII characters")
    return MAGIC + struct.pack(">HI", VERSION, chunk_size) + nonce_prefix + bytes([len(name)]) + name


def _chunk_nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _chunk_aad(domain: bytes, index: int, final: bool) -> bytes:
    return domain + b"C" + struct.pack(">QB", index, final)


def _digest_aad(domain: bytes, size: int) -> bytes:
    return domain + b"H" + struct.pack(">Q", size)


def unwrap_data_key(header: Header, master_key: bytes) -> bytes:
    try:
        return aes_key_unwrap(master_key, header.wrapped_key)
    except (InvalidUnwrap, ValueError):
        raise StoreCorruption(
            f"data key does not unwrap under master key {header.key_id!r}: "
            "wrong master key or altered header") from None


def rewrap_header(header: Header, old_master: bytes, key_id: str, new_master: bytes) -> Header:
    """``header`` with its data key re-wrapped under ``new_master`` (id ``key_id``)."""
    data_key = unwrap_data_key(header, old_master)
    return header.with_key(key_id, aes_key_wrap(new_master, data_key))


# ---------------------------------------------------------------------------- sealing


class Encryptor:
    """Seals one document, chunk by chunk; computes its size and SHA-1 on the way.

    ::

        enc = Encryptor(key_id, master_key, object_key)
        out.write(enc.header())           # placeholder: size and digest not known yet
        for piece in plaintext:
            for sealed in enc.update(piece):
                out.write(sealed)
        out.write(enc.finalize())
        out.pwrite(enc.header(), 0)       # final header: size and sealed digest

    The last full chunk is held back until more data shows that it is not the final one,
    so at most one chunk of plaintext is buffered (plus one sealed chunk on its way out).
    """

    def __init__(self, key_id: str, master_key: bytes, object_key: str,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1 .. {MAX_CHUNK_SIZE}")
        self.key_id = check_key_id(key_id)
        self.chunk_size = chunk_size
        data_key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(data_key)
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._wrapped = aes_key_wrap(master_key, data_key)
        self._domain = _domain(chunk_size, self._prefix, object_key)
        self._buf = bytearray()
        self._index = 0
        self._sha1 = hashlib.sha1()
        self._finalized = False
        self.size = 0

    @property
    def sha1(self) -> bytes:
        return self._sha1.digest()

    def _seal(self, text, final: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            raise StoreWriteError("document too large for the format (2^32 - 1 chunks)")
        sealed = self._aead.encrypt(_chunk_nonce(self._prefix, self._index), text,
                                    _chunk_aad(self._domain, self._index, final))
        self._index += 1
        return sealed

    def update(self, data) -> Iterator[bytes]:
        """Take plaintext; yield the sealed chunks it completes (iterate it to the end)."""
        if self._finalized:
            raise ValueError("update() after finalize()")
        view = memoryview(data).cast("B")
        self._sha1.update(view)
        self.size += len(view)
        size, buf = self.chunk_size, self._buf
        while view:
            if len(buf) == size:                 # more data follows: not the final chunk
                yield self._seal(buf, final=False)
                buf.clear()
            if not buf and len(view) > size:     # a whole chunk with more behind it: no copy
                yield self._seal(view[:size], final=False)
                view = view[size:]
                continue
            take = size - len(buf)
            buf += view[:take]
            view = view[take:]

    def finalize(self) -> bytes:
        """The final sealed chunk (holding the last 0 .. C bytes)."""
        if self._finalized:
            raise ValueError("finalize() called twice")
        sealed = self._seal(self._buf, final=True)
        self._buf.clear()
        self._finalized = True
        return sealed

    def header(self) -> bytes:
        """The header: a same-size placeholder before :meth:`finalize`, the real one after."""
        if not self._finalized:
            return Header(self.chunk_size, 0, self._prefix, self.key_id, self._wrapped).pack()
        digest = self._aead.encrypt(_chunk_nonce(self._prefix, DIGEST_COUNTER), self.sha1,
                                    _digest_aad(self._domain, self.size))
        return Header(self.chunk_size, self.size, self._prefix, self.key_id,
                      self._wrapped, digest).pack()


class Decryptor:
    """Opens one sealed document: unwraps its data key and authenticates its header at
    construction, then opens chunks one at a time (:class:`StoreCorruption` on failure)."""

    def __init__(self, header: Header, master_key: bytes, object_key: str) -> None:
        self.header = header
        self._aead = AESGCM(unwrap_data_key(header, master_key))
        self._domain = _domain(header.chunk_size, header.nonce_prefix, object_key)
        try:
            #: SHA-1 of the plaintext, as sealed at write time.
            self.sha1: bytes = self._aead.decrypt(
                _chunk_nonce(header.nonce_prefix, DIGEST_COUNTER), header.sealed_digest,
                _digest_aad(self._domain, header.plaintext_size))
        except InvalidTag:
            raise StoreCorruption("header does not authenticate (size or digest altered, "
                                  "or header of another document)") from None
        self.size = header.plaintext_size
        self.chunk_count = header.chunk_count

    def sealed_lengths(self) -> Iterator[int]:
        """Length of each sealed chunk, in order."""
        size, last = self.header.chunk_size, self.chunk_count - 1
        for _ in range(last):
            yield size + TAG_SIZE
        yield self.size - last * size + TAG_SIZE

    def open_chunk(self, index: int, sealed) -> bytes:
        """Plaintext of chunk ``index``, or :class:`StoreCorruption`."""
        final = index == self.chunk_count - 1
        try:
            return self._aead.decrypt(_chunk_nonce(self.header.nonce_prefix, index), sealed,
                                      _chunk_aad(self._domain, index, final))
        except InvalidTag:
            raise StoreCorruption(f"chunk {index} of {self.chunk_count} does not authenticate "
                                  "(altered, truncated, reordered or from another document)"
                                  ) from None


# ---------------------------------------------------------------------------- hashing


def verify_sha1(chunks: Iterable[bytes], expected_hex: str) -> Iterator[bytes]:
    """Pass ``chunks`` through, raising :class:`StoreCorruption` unless their SHA-1 is
    ``expected_hex`` (case-insensitive).

    The last chunk is held back until the hash is checked, so a mismatching document is
    never delivered whole: with a Content-Length sent up front, the client sees a short
    body. ``chunks`` is closed (if it has ``close``) when this generator ends or is closed.
    """
    h = hashlib.sha1()
    pending = None
    try:
        for chunk in chunks:
            if pending is not None:
                yield pending
            h.update(chunk)
            pending = chunk
        actual = h.hexdigest()
        if actual != expected_hex.strip().lower():
            raise StoreCorruption(f"SHA-1 mismatch: expected {expected_hex}, content has {actual}")
        if pending is not None:
            yield pending
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
