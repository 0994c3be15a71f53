"""MLLP server on python-hl7's asyncio streams (``hl7.mllp.start_hl7_server``).

* Persistent connections: a client sends any number of messages on one connection;
  each gets its answer, in order, before the next is read.
* Framing (:func:`decode_frame`, pure): a block is ``<VT> message <FS><CR>``; whitespace
  before ``<VT>`` (stray CR/LF between frames) is tolerated; anything else before it, or
  a connection that ends inside a block, is a framing error: the connection is closed
  (nothing can be acknowledged without a readable message) and counted.
* Oversized messages (``max_message_bytes``, the StreamReader limit) close the
  connection and are counted; memory stays bounded by about twice the limit.
* Idle connections are closed after ``idle_timeout`` seconds.
* Messages are handled in a thread pool (the handler does blocking database work), so
  several connections are served concurrently.
* TLS: pass an ``ssl.SSLContext`` (:func:`tls_context_from_settings`), with client
  certificates required when a CA is configured. The handshake is made per connection
  (``start_tls``), so that a refused one is counted and reported to ``on_tls_refused``
  (ATNA audits it as a node-authentication Security Alert).
* Auditing: ``observer(message, answer, peer address, peer certificate subject)`` is
  called after each answer (:func:`atna.pixaudit.mllp_observer`).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from hl7.mllp import start_hl7_server

__all__ = ["FramingError", "MllpStats", "MllpServer", "decode_frame", "read_frame",
           "tls_context_from_settings", "SB", "EB", "CR"]

log = logging.getLogger("opendmp.pix.mllp")

SB, EB, CR = b"\x0b", b"\x1c", b"\r"
_END = EB + CR
HANDSHAKE_TIMEOUT = 10.0
_WS = b" \t\r\n"


class FramingError(ValueError):
    """Bytes that are not an MLLP block."""


class Oversized(ValueError):
    """A block longer than the configured maximum."""


def decode_frame(block: bytes) -> bytes:
    """The payload of one block as read up to and including ``<FS><CR>``."""
    if not block.endswith(_END):
        raise FramingError("block does not end with <FS><CR>")
    body = block[:-2].lstrip(_WS)
    if not body.startswith(SB):
        raise FramingError(f"block does not start with <VT>: {body[:16]!r}")
    payload = body[1:]
    if SB in payload:
        raise FramingError("<VT> inside a block (a previous block was not terminated)")
    return payload


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next payload, or None at a clean end of stream (only whitespace left).
    Raises :class:`FramingError` or :class:`Oversized`."""
    try:
        block = await reader.readuntil(_END)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip(_WS) == b"":
            return None
        raise FramingError(f"connection closed inside a block ({len(exc.partial)} bytes)") \
            from None
    except asyncio.LimitOverrunError as exc:
        raise Oversized(f"message longer than the limit ({exc.consumed}+ bytes)") from None
    return decode_frame(block)


@dataclass
class MllpStats:
    connections: int = 0
    open_connections: int = 0
    messages: int = 0
    framing_errors: int = 0
    oversized: int = 0
    idle_closed: int = 0
    tls_failures: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class MllpServer:
    def __init__(self, handle: Callable[[bytes], bytes], *, max_message_bytes: int = 1 << 20,
                 idle_timeout: float = 300.0, workers: int = 8,
                 ssl_context: ssl.SSLContext | None = None,
                 observer: Callable[[bytes, bytes, str | None, str | None], None] | None = None,
                 on_tls_refused: Callable[[str | None, str], None] | None = None) -> None:
        self.handle = handle
        self.observer = observer
        self.on_tls_refused = on_tls_refused
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp")
        self.stats = MllpStats()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str | None = None, port: int | None = None, *,
                    sock: socket.socket | None = None) -> asyncio.AbstractServer:
        """Listen on ``host:port``, or accept on an already bound ``sock`` (the pre-fork
        model of ``opendmp serve``: one socket bound by the parent, shared by children)."""
        kwargs = {}
        if sock is not None:
            kwargs["sock"] = sock
            host = port = None
        else:
            kwargs["reuse_address"] = True
        self.server = await start_hl7_server(self._client, host, port,
                                             limit=self.max_message_bytes, **kwargs)
        return self.server

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def _handshake(self, writer, address: str | None) -> bool:
        try:
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            return True
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
            self.stats.tls_failures += 1
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("MLLP TLS handshake with %s refused: %s", address, reason)
            from atna.nodeauth import is_refusal

            if self.on_tls_refused is not None and is_refusal(exc):
                try:
                    self.on_tls_refused(address, str(reason))
                except Exception:  # noqa: BLE001 - reporting never stops the listener
                    log.exception("could not report a refused TLS handshake")
            writer.transport.abort()
            return False

    async def _client(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        address = peer[0] if peer else None
        subject = None
        if self.ssl_context is not None:
            if not await self._handshake(writer, address):
                return
            cert = writer.get_extra_info("peercert")
            if cert:
                subject = ",".join("=".join(p) for rdn in cert.get("subject", ()) for p in rdn)
        st = self.stats
        st.connections += 1
        st.open_connections += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    payload = await asyncio.wait_for(read_frame(reader), self.idle_timeout)
                except asyncio.TimeoutError:
                    st.idle_closed += 1
                    break
                except FramingError as exc:
                    st.framing_errors += 1
                    log.warning("MLLP framing error from %s, connection closed "
                                "(framing errors: %d): %s", peer, st.framing_errors, exc)
                    break
                except Oversized as exc:
                    st.oversized += 1
                    log.warning("MLLP message from %s over %d bytes, connection closed "
                                "(oversized: %d): %s", peer, self.max_message_bytes,
                                st.oversized, exc)
                    break
                except (ConnectionError, ssl.SSLError) as exc:
                    if isinstance(exc, ssl.SSLError):
                        st.tls_failures += 1
                    log.info("MLLP connection from %s lost: %s", peer, exc)
                    break
                if payload is None:
                    break
                st.messages += 1
                answer = await loop.run_in_executor(self.pool, self.handle, payload)
                writer.writeblock(answer)
                if self.observer is not None:
                    try:
                        self.observer(payload, answer, address, subject)
                    except Exception:  # noqa: BLE001 - auditing never breaks the exchange
                        log.exception("MLLP observer failed")
                await writer.drain()
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s lost: %s", peer, exc)
        finally:
            st.open_connections -= 1
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError, OSError):
                pass


def tls_context_from_settings(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """``OPENDMP_MLLP_TLS_CERT`` + ``OPENDMP_MLLP_TLS_KEY`` (PEM) turn TLS on;
    ``OPENDMP_MLLP_TLS_CA`` (PEM bundle) makes client certificates required and
    checked against it (ATNA node authentication, ITI TF-2a §3.19)."""
    cert, key = env.get("OPENDMP_MLLP_TLS_CERT"), env.get("OPENDMP_MLLP_TLS_KEY")
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key or None)
    ca = env.get("OPENDMP_MLLP_TLS_CA")
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
