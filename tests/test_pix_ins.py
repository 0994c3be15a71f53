"""The matricule INS (pix.ins): key = 97 - (NIR mod 97), Corsica 2A/2B as INSEE defines."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pix.ins import INS_NIA, INS_NIR_TEST, InsError, ins_key, parse_matricule

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def nir13(draw):
    sex = draw(st.sampled_from("12345678"))
    yy = draw(st.integers(0, 99))
    mm = draw(st.integers(1, 99))
    dept = draw(st.one_of(st.integers(0, 99).map(lambda d: f"{d:02d}"), st.sampled_from(["2A", "2B"])))
    rest = draw(st.integers(0, 999_999))
    return f"{sex}{yy:02d}{mm:02d}{dept}{rest:06d}"


def test_ins_key_of_ans_examples():
    # ANS PAM-FR examples (corpus hl7v2/ans) and the README's example
    assert parse_matricule("279035121518989").key == 89
    assert parse_matricule("184057512345625").value == "184057512345625"


@given(nir13())
def test_ins_key_roundtrip_any_valid_number(n13):
    key = ins_key(n13)
    assert 1 <= key <= 97
    m = parse_matricule(f"{n13}{key:02d}")
    assert m.number == n13 and m.key == key


@given(nir13(), st.integers(0, 99))
def test_ins_wrong_key_is_refused_with_a_readable_message(n13, key):
    if key == ins_key(n13):
        return
    with pytest.raises(InsError, match="wrong key"):
        parse_matricule(f"{n13}{key:02d}")


@given(nir13(), st.integers(0, 14), digits)
def test_ins_single_digit_change_is_caught(n13, pos, d):
    value = f"{n13}{ins_key(n13):02d}"
    if not value[pos].isdigit() or value[pos] == d or (pos == 0 and d not in "12345678"):
        return
    altered = value[:pos] + d + value[pos + 1:]
    if pos in (5, 6) and not altered[5:7].isdigit():
        return
    with pytest.raises(InsError):
        parse_matricule(altered)


def test_ins_corsica_2a_2b_use_19_and_18():
    for dept, sub in (("2A", "19"), ("2B", "18")):
        n13 = f"18405{dept}123456"
        key = 97 - int(f"18405{sub}123456") % 97
        assert ins_key(n13) == key
        assert parse_matricule(f"{n13}{key:02d}").number == n13
        # not read as department 20 (the pre-1976 Corsica): that key is refused
        key20 = 97 - int("1840520123456") % 97
        assert key20 != key
        with pytest.raises(InsError, match="wrong key"):
            parse_matricule(f"{n13}{key20:02d}")


@pytest.mark.parametrize("value, fragment", [
    ("27903512151898", "15 characters"),
    ("2790351215189890", "15 characters"),
    ("27903512151898A", "digits"),
    ("2790351215189 9", "spaces"),
    (" 27903512151898", "spaces"),
    ("279033A21518989", "digits"),
    ("979035121518989", "first digit"),
    ("2790351215189\u0668\u0669", "digits"),
    ("2790352a1518989", "digits"),
])
def test_ins_malformed_values_are_refused(value, fragment):
    with pytest.raises(InsError, match=fragment):
        parse_matricule(value, INS_NIR_TEST)


def test_ins_error_names_the_authority():
    with pytest.raises(InsError, match="INS-NIA"):
        parse_matricule("1", INS_NIA)


@given(st.text(max_size=20))
def test_ins_parser_never_raises_anything_but_InsError(value):
    try:
        parse_matricule(value)
    except InsError:
        pass


def test_ins_encoded_sex_and_birth_month():
    m = parse_matricule("279035121518989")
    assert (m.sex, m.birth_year_2, m.birth_month) == ("F", "79", 3)
