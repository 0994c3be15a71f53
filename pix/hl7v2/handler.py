"""One received HL7 v2 message in, one answer out — never an exception, never silence.

Routing on MSH-9: ADT (ITI-8 events, see :mod:`.iti8`) and QBP^Q23 (ITI-9); any other
type is answered AR 200 (unsupported message type) or 201 (unsupported event); an
unreadable message AR 100. MSH-12 must be 2.3 or later (else AR 203), MSH-11 P, T or
D (else AR 202). Each ITI-8 message is one database transaction: refused
(:class:`~pix.model.PixError`) means nothing of it is stored. Transient database
conflicts (unique-key races, deadlocks, serialization) are retried.
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from opendmp.db import read_transaction, write_transaction

from ..manager import PixManager
from ..model import PixError
from . import iti8, iti9
from .ack import Err, ack, err_from
from .message import Inbound, MessageError, decode

__all__ = ["Handler"]

log = logging.getLogger("opendmp.pix.hl7v2")

_RETRIES = 5


class Handler:
    def __init__(self, engine: Engine, manager: PixManager) -> None:
        self.engine = engine
        self.manager = manager
        cfg = manager.config
        self.app, self.facility = cfg.application, cfg.facility

    def handle(self, raw: bytes) -> bytes:
        """The answer to one message (the MLLP payload, without framing)."""
        text, codec = decode(raw)
        try:
            answer = self._handle_text(text)
        except Exception:  # noqa: BLE001 - last line of defence: answer, never crash
            log.exception("internal error handling a message")
            try:
                inbound = Inbound(text)
            except MessageError:
                inbound = None
            answer = ack(inbound, self.app, self.facility, "AE",
                         [Err("internal", "internal error; the message was not processed")])
        try:
            return answer.encode(codec)
        except UnicodeEncodeError:
            return answer.encode("utf-8")

    def _handle_text(self, text: str) -> str:
        try:
            m = Inbound(text)
        except MessageError as exc:
            return ack(None, self.app, self.facility, "AR",
                       [Err("segment", str(exc), ("MSH", 0, 0, 0))])
        code, event, _ = m.message_type
        event = event or m.comp(m.field("EVN", 1), 1).strip()
        if not _version_ok(m.version):
            return self._reject(m, "version", f"HL7 version {m.version!r} is not supported "
                                "(2.3 or later)", ("MSH", 12, 1, 0))
        if m.processing_id not in ("P", "T", "D"):
            return self._reject(m, "processing_id", f"processing id {m.processing_id!r} is "
                                "not supported (P, T or D)", ("MSH", 11, 1, 0))
        if code == "ADT":
            if event in iti8.ADD_EVENTS or event in iti8.UPDATE_EVENTS:
                return self._feed(m, event)
            if event in iti8.MERGE_EVENTS:
                return self._merge(m)
            return self._reject(m, "event", f"ADT^{event} is not an ITI-8 event this PIX "
                                "Manager accepts (A01, A04, A05, A08, A28, A31, A40)",
                                ("MSH", 9, 1, 2))
        if code == "QBP":
            if event == "Q23":
                return self._query(m)
            return self._reject(m, "event", f"QBP^{event} is not supported (ITI-9 is QBP^Q23)",
                                ("MSH", 9, 1, 2))
        return self._reject(m, "msg_type", f"message type {code or '(empty)'} is not "
                            "supported by this PIX Manager (ADT, QBP^Q23)", ("MSH", 9, 1, 1))

    def _reject(self, m: Inbound, key: str, message: str, loc) -> str:
        return ack(m, self.app, self.facility, "AR", [Err(key, message, loc)])

    def _write(self, m: Inbound, work) -> str:
        for attempt in range(_RETRIES):
            try:
                with write_transaction(self.engine) as conn:
                    work(conn)
                return ack(m, self.app, self.facility, "AA")
            except PixError as exc:
                e = err_from(exc)
                return ack(m, self.app, self.facility, e.msa_code, [e])
            except (IntegrityError, DBAPIError) as exc:
                if attempt == _RETRIES - 1 or not _transient(exc):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _feed(self, m: Inbound, event: str) -> str:
        try:
            feed, locs = iti8.feed_from(self.manager, m, event)
        except PixError as exc:
            e = err_from(exc)
            return ack(m, self.app, self.facility, e.msa_code, [e])
        return self._write(m, lambda conn: self.manager.feed(conn, feed, locs))

    def _merge(self, m: Inbound) -> str:
        try:
            merges = iti8.merges_from(self.manager, m)
        except PixError as exc:
            e = err_from(exc)
            return ack(m, self.app, self.facility, e.msa_code, [e])

        def work(conn):
            for merge, sloc, mloc in merges:
                self.manager.merge(conn, merge, sloc, mloc)

        return self._write(m, work)

    def _query(self, m: Inbound) -> str:
        q, errors = iti9.parse_query(self.manager, m)
        if errors:
            return iti9.response(self.manager, m, None, errors)
        try:
            with read_transaction(self.engine) as conn:
                found = self.manager.query(conn, q).identifiers
        except PixError as exc:
            return iti9.response(self.manager, m, None, [err_from(exc)])
        return iti9.response(self.manager, m, list(found), [])


def _version_ok(version: str) -> bool:
    parts = version.split(".")
    try:
        return int(parts[0]) == 2 and (int(parts[1]) if len(parts) > 1 else 0) >= 3
    except ValueError:
        return False


def _transient(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent feed inserted the same identifier first
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked"))
