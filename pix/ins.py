"""The INS (Identifiant National de Santé): the matricule INS and its key.

The matricule INS is the patient's NIR (numéro d'inscription au répertoire, the French
social-security number) or, for people who have none yet, an NIA (numéro
d'identification d'attente) issued by the CNAV: 13 characters followed by a 2-digit
control key (15 characters in all). The key is ``97 - (N mod 97)`` where N is the
13-character number read as an integer; for people born in Corsica the department in
positions 6-7 is ``2A`` or ``2B`` and INSEE computes the key with ``2A`` replaced by
``19`` and ``2B`` by ``18`` (i.e. N - 1,000,000 and N - 2,000,000).

Assigning authorities (CX.4.2, ANS; research/anchors.md §b):

=====================  ===========================================
``1.2.250.1.213.1.4.8``  INS-NIR (production)
``1.2.250.1.213.1.4.9``  INS-NIA (production)
``1.2.250.1.213.1.4.10`` INS-NIR test (ANS test platforms, examples)
``1.2.250.1.213.1.4.11`` INS-NIR demonstration
=====================  ===========================================

Pure functions: a string in, a :class:`Matricule` or an :class:`InsError` with a readable
message out. Nothing here touches storage.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "INS_NIR",
    "INS_NIA",
    "INS_NIR_TEST",
    "INS_NIR_DEMO",
    "INS_OIDS",
    "InsError",
    "Matricule",
    "ins_key",
    "is_ins_oid",
    "parse_matricule",
]

INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS: frozenset[str] = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIR_DEMO})

_OID_NAMES = {
    INS_NIR: "INS-NIR",
    INS_NIA: "INS-NIA",
    INS_NIR_TEST: "INS-NIR (test)",
    INS_NIR_DEMO: "INS-NIR (demo)",
}

# sex digit, YY, MM, department (2 digits or 2A/2B), 3-digit commune, 3-digit order, 2-digit key
_SHAPE = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{6}[0-9]{2}", re.ASCII)


class InsError(ValueError):
    """A matricule INS that is malformed or whose key is wrong; ``str()`` says why."""


def is_ins_oid(oid: str | None) -> bool:
    return oid in INS_OIDS


def _numeric(number13: str) -> int:
    """The 13-character number as INSEE reads it for the key (Corsica: 2A -> 19, 2B -> 18)."""
    dept = number13[5:7].upper()
    if dept == "2A":
        number13 = number13[:5] + "19" + number13[7:]
    elif dept == "2B":
        number13 = number13[:5] + "18" + number13[7:]
    return int(number13)


def ins_key(number13: str) -> int:
    """The control key (1..97) of a 13-character NIR/NIA."""
    if len(number13) != 13 or not _SHAPE.fullmatch(number13 + "00"):
        raise InsError(f"not a 13-character NIR/NIA: {number13!r}")
    return 97 - _numeric(number13) % 97


@dataclass(frozen=True, slots=True)
class Matricule:
    """A checked matricule INS (15 characters)."""

    number: str  # 13 characters
    key: int

    @property
    def value(self) -> str:
        return f"{self.number}{self.key:02d}"

    @property
    def sex_digit(self) -> str:
        return self.number[0]

    @property
    def sex(self) -> str | None:
        """``M``/``F`` as the first digit encodes it (1/7 male, 2/8 female), else None
        (3, 4 and other digits are used for temporary and special numbers)."""
        return {"1": "M", "2": "F", "7": "M", "8": "F"}.get(self.number[0])

    @property
    def birth_year_2(self) -> str:
        return self.number[1:3]

    @property
    def birth_month(self) -> int | None:
        """01-12 when the month is real; None for the pseudo-months (20-42, 50-99)
        INSEE uses when the month of birth is unknown."""
        m = int(self.number[3:5])
        return m if 1 <= m <= 12 else None


def parse_matricule(value: str, oid: str | None = None) -> Matricule:
    """Check a matricule INS: 15 characters, digits except ``2A``/``2B`` in the
    department, first digit 1-8, and the key ``97 - (N mod 97)``.

    Raises :class:`InsError` with a message that names the problem and the value.
    """
    what = _OID_NAMES.get(oid or "", "matricule INS")
    if not isinstance(value, str):
        raise InsError(f"{what}: expected a string")
    v = value.strip()
    if v != value or " " in v:
        raise InsError(f"{what} {value!r}: must not contain spaces")
    if len(v) != 15:
        raise InsError(f"{what} {value!r}: must be 15 characters (13-character NIR/NIA "
                       f"and a 2-digit key), got {len(v)}")
    if not _SHAPE.fullmatch(v.upper()) or v.upper() != v:
        raise InsError(f"{what} {value!r}: must be digits (department 2A/2B allowed "
                       f"in positions 6-7)")
    if v[0] not in "12345678":
        raise InsError(f"{what} {value!r}: first digit (sex) must be 1-8, got {v[0]!r}")
    number, key = v[:13], int(v[13:])
    expected = 97 - _numeric(number) % 97
    if key != expected:
        raise InsError(f"{what} {value!r}: wrong key {key:02d}, "
                       f"97 - ({number} mod 97) = {expected:02d}")
    return Matricule(number, key)
