"""Durable outbox for PIX Update Notifications: ITI-10 (ADT^A31 over MLLP) and ITI-46
(PRPA_IN201302UV02 over SOAP 1.2, to consumers configured by URL).

A notification is a row of ``pix_outbox`` written in the same transaction as the change
it reports, so nothing accepted is lost: if the transaction commits, the notification
exists; if it rolls back, it never did. The dispatcher (:func:`dispatch_due`, run by the
MLLP listener process) sends each consumer's rows strictly in order (``pk``): the oldest
pending row of a consumer is retried with exponential backoff (1 s, 2 s, 4 s ... capped
at ``max_backoff``) and nothing newer is sent to that consumer before it is
acknowledged — a consumer that is down gets everything later, in order. An ``AA``/``CA``
acknowledgement (MSA-1, or HL7v3 ``acknowledgement/typeCode``) marks the row DELIVERED;
``AE``/``AR`` (or a SOAP Sender fault) marks it REJECTED (the consumer refused it:
retrying would not help) and the next row goes; no answer, an HTTP error or a Receiver
fault is retried. Delivery is at least once:
a crash between the consumer's ACK and our commit resends that notification.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, func, insert, select, update

from opendmp.db import read_transaction, write_transaction
from opendmp.schema import pix_outbox as O

from .config import Consumer, PixConfig
from .model import Identifier

__all__ = ["PENDING", "DELIVERED", "REJECTED", "Notifier", "dispatch_due", "send_mllp",
           "send_soap", "pending_count", "msa_code"]

log = logging.getLogger("opendmp.pix.outbox")

PENDING, DELIVERED, REJECTED = 0, 1, 2


def _now_ms() -> int:
    return int(time.time() * 1000)


class Notifier:
    """The manager's notifier for ITI-10: one outbox row per interested consumer."""

    def __init__(self, config: PixConfig) -> None:
        self.config = config
        #: False without consumers: the manager then skips reading the group
        self.active = bool(config.consumers)

    def __call__(self, conn: Connection, identifiers: Sequence[Identifier]) -> None:
        from .hl7v2.iti10 import a31, for_consumer
        from .hl7v3.iti46 import notification

        now = _now_ms()
        for consumer in self.config.consumers:
            ids = for_consumer(self.config, consumer, identifiers)
            if not ids:
                continue
            message = notification(self.config, consumer, ids) if consumer.url \
                else a31(self.config, consumer, ids).encode()
            conn.execute(insert(O).values(
                consumer=consumer.name, message=message,
                state=PENDING, attempts=0, created_at=now, next_attempt_at=now))


def send_mllp(consumer: Consumer, message: bytes, timeout: float = 10.0) -> str:
    """Send one message over MLLP, return MSA-1 of the answer (raises OSError)."""
    with socket.create_connection((consumer.host, consumer.port), timeout=timeout) as s:
        s.sendall(b"\x0b" + message + b"\x1c\r")
        buf = b""
        while b"\x1c\r" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed before the acknowledgement")
            buf += chunk
    return msa_code(buf.split(b"\x1c\r", 1)[0].lstrip(b"\x0b"))


def send_soap(consumer: Consumer, message: bytes, timeout: float = 10.0) -> str:
    """ITI-46: POST one PRPA_IN201302UV02 to the consumer's URL, return its
    ``acknowledgement/typeCode`` (``FAULT`` for a Sender fault; raises OSError when the
    consumer cannot be reached or answers with an HTTP/Receiver error)."""
    import httpx

    from soapstack.client import SoapClient
    from soapstack.envelope import SoapFault

    from .hl7v3.iti46 import ACTION, ack_code

    client = SoapClient(consumer.url, timeout=timeout)
    try:
        reply = client.call(ACTION, message)
        return ack_code(reply.payload)
    except SoapFault as fault:
        if fault.code == "Sender":
            return "FAULT"
        raise OSError(f"SOAP fault: {fault.reason}") from None
    except (httpx.HTTPError, StopIteration) as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()


def msa_code(ack: bytes) -> str:
    """MSA-1 of a consumer's acknowledgement (raises OSError when there is none)."""
    text = ack.decode("utf-8", "replace")
    for seg in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if seg.startswith("MSA") and len(seg) > 4:
            return seg.split(seg[3])[1].split("^")[0].strip()
    raise OSError("acknowledgement without MSA segment")


def dispatch_due(engine: Engine, config: PixConfig, *, max_backoff_s: float = 300.0,
                 send=send_mllp, limit: int = 100, send_v3=None, audit=None) -> int:
    """Send what is due for every consumer, in order; returns how many rows were settled.
    ``audit(consumer, message, ack code or None, error or None)`` is told of every
    delivery attempt (ATNA: :func:`atna.pixaudit.notification_audit`)."""
    settled = 0
    for consumer in config.consumers:
        deliver = (send_v3 or send_soap) if consumer.url else send
        for _ in range(limit):
            with read_transaction(engine) as conn:
                row = conn.execute(select(O.c.pk, O.c.message, O.c.attempts, O.c.next_attempt_at)
                                   .where(O.c.consumer == consumer.name, O.c.state == PENDING)
                                   .order_by(O.c.pk).limit(1)).first()
            if row is None or row.next_attempt_at > _now_ms():
                break
            try:
                code = deliver(consumer, row.message)
            except OSError as exc:
                if audit is not None:
                    audit(consumer, row.message, None, str(exc)[:200])
                delay = min(max_backoff_s, 2 ** min(row.attempts, 16))
                with write_transaction(engine) as conn:
                    conn.execute(update(O).where(O.c.pk == row.pk).values(
                        attempts=row.attempts + 1, last_error=str(exc)[:500],
                        next_attempt_at=_now_ms() + int(delay * 1000)))
                log.warning("ITI-10/46 to %s failed (attempt %d, next in %.0f s): %s",
                            consumer.name, row.attempts + 1, delay, exc)
                break
            if audit is not None:
                audit(consumer, row.message, code, None)
            state = DELIVERED if code in ("AA", "CA") else REJECTED
            with write_transaction(engine) as conn:
                conn.execute(update(O).where(O.c.pk == row.pk).values(
                    state=state, attempts=row.attempts + 1, done_at=_now_ms(),
                    last_error=None if state == DELIVERED else f"MSA-1={code}"))
            if state == REJECTED:
                log.warning("ITI-10/46 notification %d refused by %s (ack %s)",
                            row.pk, consumer.name, code)
            settled += 1
    return settled


def pending_count(engine: Engine) -> int:
    with read_transaction(engine) as conn:
        return conn.execute(select(func.count()).select_from(O)
                            .where(O.c.state == PENDING)).scalar_one()
