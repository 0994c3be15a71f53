"""Test helpers for the PIX Manager: real MLLP clients and answer parsing.

``mllp_send(port, *messages)`` runs python-hl7's ``mllp_send`` command (a separate
process, real socket); ``Persistent(port)`` wraps ``hl7.client.MLLPClient`` (one
connection, many messages). ``Answer`` reads an acknowledgement / RSP^K23.
"""
from __future__ import annotations

import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hl7.client import MLLPClient

from pix.ins import ins_key

MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")
NIR = "1.2.250.1.213.1.4.8"
NIA = "1.2.250.1.213.1.4.9"
LOCAL = "1.2.250.1.999.77.1"      # a hospital's local (IPP) domain for the tests
LOCAL2 = "1.2.250.1.999.77.2"

_rng = random.Random()


def new_ins(sex: str = "M", year: int = 1984, month: int = 5, nia: bool = False) -> str:
    """A well-formed matricule INS whose encoding agrees with sex/year/month
    (an NIA-style number, first digit 7/8, with ``nia``)."""
    first = ("7" if sex == "M" else "8") if nia else ("1" if sex == "M" else "2")
    n13 = (f"{first}{year % 100:02d}{month:02d}"
           f"{_rng.randint(1, 95):02d}{_rng.randint(1, 999):03d}{_rng.randint(1, 999):03d}")
    return f"{n13}{ins_key(n13):02d}"


def new_local() -> str:
    return f"IPP{_rng.randint(10**9, 10**10 - 1)}"


def adt(event: str, pid3: str, *, name: str = "DUPONT^JEAN^JEAN^^^^L", dob: str = "19840512",
        sex: str = "M", version: str = "2.5", mrg: str | None = None, ctrl: str | None = None,
        app: str = "HIS", facility: str = "CHU") -> str:
    structure = {"A40": "ADT_A39", "A08": "ADT_A01"}.get(event, "ADT_A01")
    ctrl = ctrl or f"C{_rng.randint(0, 10**9)}"
    segs = [f"MSH|^~\\&|{app}|{facility}|OPENDMP|OPENDMP|20260101120000||ADT^{event}^{structure}"
            f"|{ctrl}|P|{version}",
            f"EVN|{event}|20260101120000",
            f"PID|1||{pid3}||{name}||{dob}|{sex}"]
    if mrg is not None:
        segs.append(f"MRG|{mrg}")
    segs.append("PV1|1|N")
    return "\r".join(segs) + "\r"


def qbp(cx: str, domains: str = "", ctrl: str | None = None) -> str:
    ctrl = ctrl or f"Q{_rng.randint(0, 10**9)}"
    return ("MSH|^~\\&|CONSUMER|DEPT|OPENDMP|OPENDMP|20260101120000||QBP^Q23^QBP_Q21|"
            f"{ctrl}|P|2.5\rQPD|IHE PIX Query|T{ctrl}|{cx}|{domains}\rRCP|I\r")


def cx(value: str, oid: str, ns: str = "", type_code: str = "") -> str:
    return f"{value}^^^{ns}&{oid}&ISO" + (f"^{type_code}" if type_code else "")


@dataclass
class Answer:
    text: str

    def __post_init__(self) -> None:
        t = self.text.replace("\r\n", "\r").replace("\n", "\r")
        t = t.strip("\x0b\x1c\r")
        self.segments = [s.split("|") for s in t.split("\r") if s.strip()]

    def seg(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    def field(self, name: str, n: int, occurrence: int = 0) -> str:
        segs = self.seg(name)
        if len(segs) <= occurrence:
            return ""
        s = segs[occurrence]
        idx = n - 1 if name == "MSH" else n
        return s[idx] if len(s) > idx else ""

    @property
    def msa(self) -> str:
        return self.field("MSA", 1)

    @property
    def qak(self) -> str:
        return self.field("QAK", 2)

    @property
    def errors(self) -> list[list[str]]:
        return self.seg("ERR")

    @property
    def err_locations(self) -> list[str]:
        return [e[2] if len(e) > 2 else "" for e in self.errors]

    @property
    def err_codes(self) -> list[str]:
        out = []
        for e in self.errors:
            if len(e) > 3 and e[3]:
                out.append(e[3].split("^")[0])           # v2.5 ERR-3
            elif len(e) > 1 and "&" in e[1]:
                out.append(e[1].split("^")[3].split("&")[0])  # v2.3.1 ERR-1 ELD
        return out

    @property
    def pid3(self) -> list[str]:
        raw = self.field("PID", 3)
        return raw.split("~") if raw else []

    def ids(self) -> set[tuple[str, str]]:
        """(id, universal id or namespace) of each PID-3 repetition."""
        out = set()
        for rep in self.pid3:
            c = rep.split("^")
            hd = c[3].split("&") if len(c) > 3 else [""]
            out.add((c[0], (hd[1] if len(hd) > 1 and hd[1] else hd[0])))
        return out

    def __repr__(self) -> str:
        return "Answer(" + self.text.replace("\r", "\n") + ")"


def mllp_send(port: int, *messages: str, timeout: float = 60) -> list[Answer]:
    """Send with python-hl7's ``mllp_send`` command (one connection, a file in
    ``--loose`` form: one message after another, CRLF between segments)."""
    with tempfile.NamedTemporaryFile("w", suffix=".hl7", delete=False,
                                     encoding="utf-8", newline="") as f:
        for m in messages:
            f.write(m.replace("\r", "\r\n"))
        path = f.name
    proc = subprocess.run([MLLP_SEND, "--loose", "-p", str(port), "-f", path, "127.0.0.1"],
                          capture_output=True, text=True, timeout=timeout)
    Path(path).unlink()
    assert proc.returncode == 0, proc.stderr
    blocks = [b for b in proc.stdout.split("\x1c") if b.strip("\r\n\x0b ")]
    return [Answer(b) for b in blocks]


def send1(port: int, message: str) -> Answer:
    answers = mllp_send(port, message)
    assert len(answers) == 1, answers
    return answers[0]


class Persistent:
    """One MLLP connection (``hl7.client.MLLPClient``) for many messages."""

    def __init__(self, port: int) -> None:
        self.client = MLLPClient("127.0.0.1", port)

    def send(self, message: str) -> Answer:
        data = self.client.send_message(message)
        while not data.endswith(b"\x1c\r"):  # MLLPClient does one recv(); finish the block
            more = self.client.socket.recv(65536)
            if not more:
                break
            data += more
        return Answer(data.decode("utf-8"))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Persistent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
