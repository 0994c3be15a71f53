"""Reading received HL7 v2 messages (python-hl7 underneath) and writing ER7 text.

python-hl7 splits the message into segments and fields; components, subcomponents and
repetitions are split here from each field's text with the message's own encoding
characters, and every leaf is unescaped (``\\T\\`` -> ``&``...). Writers escape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import hl7

__all__ = ["Inbound", "MessageError", "decode", "escape", "CX", "parse_cx_text"]

_CHARSETS = {
    "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8", "UTF-8": "utf-8",
    "8859/1": "latin-1", "8859/15": "iso-8859-15", "ASCII": "ascii", "": "utf-8",
}


class MessageError(ValueError):
    """Not an HL7 v2 message we can read (no MSH, bad encoding characters...)."""


def _msh18(raw: bytes) -> str:
    line = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not line.startswith(b"MSH") or len(line) < 8:
        return ""
    sep = line[3:4]
    fields = line.split(sep)
    # fields[0]="MSH", fields[1]=encoding chars (MSH-2), fields[n-1]=MSH-n
    return fields[17].decode("ascii", "replace").split("^")[0].strip().upper() \
        if len(fields) > 17 else ""


def decode(raw: bytes) -> tuple[str, str]:
    """Text and codec of a received message: MSH-18 when it names a charset we know,
    else UTF-8, else ISO-8859-1 (which always decodes)."""
    codec = _CHARSETS.get(_msh18(raw))
    if codec:
        try:
            return raw.decode(codec), codec
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def escape(value: str, enc: str = "^~\\&") -> str:
    """Escape text for an ER7 field (HL7 v2.5 §2.7.4)."""
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    out = value.replace(esc, f"{esc}E{esc}")
    out = out.replace("|", f"{esc}F{esc}").replace(comp, f"{esc}S{esc}")
    out = out.replace(sub, f"{esc}T{esc}").replace(rep, f"{esc}R{esc}")
    return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}X0A{esc}")


@dataclass(frozen=True)
class CX:
    id: str
    namespace: str | None
    universal_id: str | None
    universal_id_type: str | None
    type_code: str | None


_NL = re.compile(r"\r\n|\n|\r")


class Inbound:
    """A received message. ``field(seg, n)`` is the raw ER7 text of field n of the
    first such segment; ``reps``/``comps``/``subs`` split it; ``text()`` unescapes."""

    def __init__(self, text: str) -> None:
        text = _NL.sub("\r", text).strip("\r\n\x00 \t")
        if not text.startswith("MSH") or len(text) < 8:
            raise MessageError("message does not start with an MSH segment")
        self.enc = text[4:8]
        self.fs = text[3]
        if len(set(self.enc + self.fs)) != 5 or any(c.isalnum() for c in self.enc + self.fs):
            raise MessageError(f"bad encoding characters in MSH-1/MSH-2: {text[3:8]!r}")
        # blank lines between segments are common in files and on the wire
        text = "\r".join(s for s in text.split("\r") if s.strip())
        try:
            self.msg = hl7.parse(text)
        except Exception as exc:  # python-hl7 raises assorted errors on garbage
            raise MessageError(f"unreadable HL7 v2 message: {exc}") from None
        self.raw_text = text
        self._segs: dict[str, list] = {}
        for seg in self.msg:
            name = str(seg[0])
            self._segs.setdefault(name, []).append(seg)

    # --------------------------------------------------------------- access
    def segments(self, name: str) -> list:
        return self._segs.get(name, [])

    def has(self, name: str) -> bool:
        return name in self._segs

    def segment_text(self, name: str) -> str | None:
        segs = self.segments(name)
        return str(segs[0]) if segs else None

    def field(self, seg_name: str, n: int, occurrence: int = 0, seg=None) -> str:
        if seg is None:
            segs = self.segments(seg_name)
            if len(segs) <= occurrence:
                return ""
            seg = segs[occurrence]
        try:
            return str(seg[n])
        except IndexError:
            return ""

    def reps(self, value: str) -> list[str]:
        return value.split(self.enc[1]) if value else []

    def comps(self, value: str) -> list[str]:
        return value.split(self.enc[0])

    def subs(self, value: str) -> list[str]:
        return value.split(self.enc[3])

    def text(self, value: str) -> str:
        return self.msg.unescape(value) if self.enc[2] in value else value

    def comp(self, value: str, i: int) -> str:
        """Component i (1-based) of a field/repetition, unescaped, '' when absent."""
        c = self.comps(value)
        return self.text(c[i - 1]) if len(c) >= i else ""

    # --------------------------------------------------------------- header
    def msh(self, n: int) -> str:
        return self.field("MSH", n)

    @property
    def control_id(self) -> str:
        return self.text(self.msh(10))

    @property
    def message_type(self) -> tuple[str, str, str]:
        c = self.comps(self.msh(9))
        return tuple((self.text(c[i]).strip() if len(c) > i else "") for i in range(3))

    @property
    def version(self) -> str:
        return self.comp(self.msh(12), 1).strip()

    @property
    def processing_id(self) -> str:
        return self.comp(self.msh(11), 1).strip()

    @property
    def source(self) -> str:
        """MSH-3|MSH-4 (first components), the Patient Identity Source (ITI TF-2a §3.8.4.1.3.1)."""
        return f"{self.comp(self.msh(3), 1)}|{self.comp(self.msh(4), 1)}"

    def cx(self, value: str) -> CX:
        c = self.comps(value)
        get = lambda i: self.text(c[i]).strip() if len(c) > i else ""  # noqa: E731
        hd = self.subs(c[3]) if len(c) > 3 else []
        hget = lambda i: self.text(hd[i]).strip() if len(hd) > i else ""  # noqa: E731
        return CX(get(0), hget(0) or None, hget(1) or None, hget(2) or None, get(4) or None)


def parse_cx_text(value: str) -> CX:
    """A CX in the default encoding characters (tests, CLI)."""
    return Inbound(f"MSH|^~\\&|||||||ACK|1|P|2.5\rZZZ|{value}").cx(value)
