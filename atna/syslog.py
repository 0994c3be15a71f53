"""Syslog framing and parsing for ITI-20, without I/O: bytes in, events out.

RFC 5424 (The Syslog Protocol) §6: ``<PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP
PROCID SP MSGID SP STRUCTURED-DATA [SP MSG]``; a MSG may start with a UTF-8 BOM (§6.4),
which we strip. RFC 5425 (TLS transport) §4.3: octet-counting framing ``MSG-LEN SP
SYSLOG-MSG``; many senders (logger without ``--octet-count``, old stacks) use LF-terminated
frames instead (RFC 6587 §3.4.2), which :class:`StreamFramer` accepts as a fallback when a
frame does not start with a digit. RFC 5426 (UDP): one message per datagram.

:class:`StreamFramer` is a state machine fed with whatever the socket gave; it yields
:class:`Frame` events and :class:`FramingError` events. After an octet-counting error
the stream cannot be resynchronised, so ``closed`` becomes true and the caller must drop
the connection (RFC 5425 §4.3.1: a receiver may close on a frame it cannot handle).
"""
from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass
from datetime import datetime, timezone

#: RFC 5425 §4.3.1 says receivers SHOULD accept 8192-octet messages and MAY accept larger
#: ones; audit messages with base64 queries are often larger. 1 MiB by default.
DEFAULT_MAX_FRAME = 1024 * 1024
BOM = b"\xef\xbb\xbf"
NILVALUE = "-"


@dataclass(frozen=True)
class Frame:
    """One complete syslog message as it came off the wire (framing removed)."""

    data: bytes


@dataclass(frozen=True)
class FramingError:
    """A frame that could not be delimited (bad length, over the size cap)."""

    reason: str


class SyslogError(ValueError):
    """An RFC 5424 message that does not parse."""


@dataclass(frozen=True)
class SyslogMessage:
    """An RFC 5424 message (§6). ``msg`` is the payload with any leading BOM removed."""

    facility: int
    severity: int
    version: int
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: str | None
    msg: bytes

    @property
    def sd_params(self) -> dict[str, dict[str, str]]:
        """Structured data as ``{sd_id: {param: value}}`` (RFC 5424 §6.3)."""
        return parse_structured_data(self.structured_data)


class StreamFramer:
    """RFC 5425 octet counting with an LF fallback, for one TCP/TLS connection."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        #: true once the stream is desynchronised: the connection must be closed.
        self.closed = False

    def feed(self, data: bytes) -> list[Frame | FramingError]:
        if self.closed:
            return []
        self._buf += data
        events: list[Frame | FramingError] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        max_digits = len(str(self.max_frame))
        while pos < n:
            first = buf[pos]
            if first in (0x0A, 0x0D, 0x00):  # stray separators between frames
                pos += 1
                continue
            if 0x30 <= first <= 0x39:  # octet counting: MSG-LEN SP SYSLOG-MSG
                space = buf.find(b" ", pos, min(n, pos + max_digits + 1))
                if space < 0:
                    if n - pos > max_digits:
                        events.append(self._fail(f"no space after {max_digits} digits of MSG-LEN"))
                        break
                    break  # need more bytes
                digits = bytes(buf[pos:space])
                if not digits.isdigit() or digits[:1] == b"0":
                    events.append(self._fail(f"invalid MSG-LEN {digits[:20]!r}"))
                    break
                length = int(digits)
                if length > self.max_frame:
                    events.append(self._fail(f"frame of {length} octets exceeds the cap of {self.max_frame}"))
                    break
                end = space + 1 + length
                if end > n:
                    break
                events.append(Frame(bytes(buf[space + 1:end])))
                pos = end
            elif first == 0x3C:  # '<': non-transparent framing, one message per line
                lf = buf.find(b"\n", pos, min(n, pos + self.max_frame + 1))
                if lf < 0:
                    if n - pos > self.max_frame:
                        events.append(self._fail(f"LF-framed message exceeds the cap of {self.max_frame}"))
                        break
                    break
                events.append(Frame(bytes(buf[pos:lf]).rstrip(b"\r")))
                pos = lf + 1
            else:
                events.append(self._fail(f"frame starts with {bytes(buf[pos:pos + 1])!r}, "
                                         "neither MSG-LEN nor '<'"))
                break
        if self.closed:
            self._buf = bytearray()
        else:
            del buf[:pos]
        return events

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def _fail(self, reason: str) -> FramingError:
        self.closed = True
        return FramingError(reason)


_HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<ver>[1-9]\d{0,2}) "
    rb"(?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) ")


def parse_rfc5424(data: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message; trailing LF (rsyslog templates add one) is dropped."""
    m = _HEADER.match(data)
    if m is None:
        raise SyslogError("not an RFC 5424 header (<PRI>VERSION TIMESTAMP HOSTNAME APP PROCID MSGID)")
    pri = int(m.group("pri"))
    if pri > 191:
        raise SyslogError(f"PRI {pri} out of range (RFC 5424 §6.2.1)")
    rest = data[m.end():]
    sd, rest = _split_structured_data(rest)
    if rest.startswith(b" "):
        rest = rest[1:]
    elif rest:
        raise SyslogError("missing SP between STRUCTURED-DATA and MSG")
    if rest.startswith(BOM):
        rest = rest[len(BOM):]
    if rest.endswith(b"\n"):
        rest = rest.rstrip(b"\r\n")

    def field(name: str) -> str | None:
        value = m.group(name).decode("utf-8", "replace")
        return None if value == NILVALUE else value

    return SyslogMessage(
        facility=pri >> 3, severity=pri & 7, version=int(m.group("ver")),
        timestamp=field("ts"), hostname=field("host"), app_name=field("app"),
        procid=field("proc"), msgid=field("msgid"),
        structured_data=None if sd == NILVALUE else sd, msg=bytes(rest))


def _split_structured_data(rest: bytes) -> tuple[str, bytes]:
    """STRUCTURED-DATA = NILVALUE / 1*SD-ELEMENT, where PARAM-VALUEs escape ``"``, ``\\``, ``]``."""
    if rest.startswith(b"-"):
        return NILVALUE, rest[1:]
    if not rest.startswith(b"["):
        if not rest:
            return NILVALUE, b""
        raise SyslogError("STRUCTURED-DATA is neither '-' nor '['")
    i, n = 0, len(rest)
    while i < n and rest[i:i + 1] == b"[":
        in_value = False
        i += 1
        while True:
            if i >= n:
                raise SyslogError("unterminated SD-ELEMENT")
            c = rest[i:i + 1]
            if in_value:
                if c == b"\\":
                    i += 2
                    continue
                if c == b'"':
                    in_value = False
            elif c == b'"':
                in_value = True
            elif c == b"]":
                i += 1
                break
            i += 1
    return rest[:i].decode("utf-8", "replace"), rest[i:]


_SD_ELEMENT = re.compile(r'\[([^\s\]=]+)((?:\s+[^\s=\]]+="(?:[^"\\]|\\.)*")*)\s*\]')
_SD_PARAM = re.compile(r'([^\s=\]]+)="((?:[^"\\]|\\.)*)"')


def parse_structured_data(sd: str | None) -> dict[str, dict[str, str]]:
    if not sd:
        return {}
    out: dict[str, dict[str, str]] = {}
    for element in _SD_ELEMENT.finditer(sd):
        params = out.setdefault(element.group(1), {})
        for p in _SD_PARAM.finditer(element.group(2)):
            params[p.group(1)] = re.sub(r'\\(["\\\]])', r"\1", p.group(2))
    return out


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_rfc5424(msg: bytes, *, hostname: str, app_name: str = "opendmp", procid: str = "-",
                   msgid: str = "IHE+RFC-3881", facility: int = 10, severity: int = 5,
                   timestamp: datetime | None = None,
                   structured_data: dict[str, dict[str, str]] | None = None) -> bytes:
    """One RFC 5424 message as ITI TF-2a §3.20.4.1.2.1 wants it: facility 10 (authpriv),
    severity 5 (notice), MSGID ``IHE+RFC-3881``, the audit XML as MSG (no BOM)."""
    ts = (timestamp or datetime.now(timezone.utc)).isoformat(timespec="microseconds")
    ts = ts.replace("+00:00", "Z")
    if structured_data:
        sd = "".join(
            f"[{sd_id}" + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
            for sd_id, params in structured_data.items())
    else:
        sd = NILVALUE
    header = f"<{facility * 8 + severity}>1 {ts} {_token(hostname)} {_token(app_name)} " \
             f"{_token(procid)} {_token(msgid)} {sd} "
    return header.encode("ascii", "replace") + msg


@lru_cache(maxsize=256)  # the same few host/app/procid/msgid values on every message
def _token(value: str | None) -> str:
    """RFC 5424 header fields are PRINTUSASCII without spaces, at most 255 octets."""
    if not value:
        return NILVALUE
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)
    return cleaned[:255] or NILVALUE


def octet_frame(message: bytes) -> bytes:
    """RFC 5425 §4.3: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message
