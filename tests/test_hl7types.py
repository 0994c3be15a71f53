"""HL7 v2 data types as restricted by ITI TF-3 Table 4.2.3.1.7-2 (CX, XCN, XON, XTN,
DTM, OID, UUID)."""
from __future__ import annotations

import calendar
from datetime import datetime

import pytest
from hypothesis import given, strategies as st

from registry.hl7types import (
    CX,
    HL7TypeError,
    check_xcn,
    check_xon,
    check_xtn,
    is_oid,
    is_uuid_urn,
    parse_cx,
    parse_dtm,
)

# --------------------------------------------------------------------------- CX


@pytest.mark.parametrize("value, expected", [
    ("45^^^&1.2.840.113519.6.197&ISO", CX("45", "1.2.840.113519.6.197")),
    ("89765a87b^^^&3.4.5&ISO", CX("89765a87b", "3.4.5")),                      # NIST sourcePatientId
    ("279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH",
     CX("279035121518989", "1.2.250.1.213.1.4.10", type_code="NH")),          # DMP form
])
def test_parse_cx_accepts_iti_tf3_and_dmp_forms(value, expected):
    assert parse_cx(value) == expected


def test_cx_canonical_form_drops_the_type_code():
    cx = parse_cx("279035121518989^^^&1.2.250.1.213.1.4.8&ISO^NH")
    assert cx.canonical == "279035121518989^^^&1.2.250.1.213.1.4.8&ISO"
    assert str(cx) == "279035121518989^^^&1.2.250.1.213.1.4.8&ISO^NH"
    assert str(parse_cx(cx.canonical)) == cx.canonical


def test_parse_cx_strict_mode_allows_only_cx1_and_cx4():
    assert parse_cx("45^^^&1.2.3&ISO", allow_type_code=False).id == "45"
    with pytest.raises(HL7TypeError, match="at most 4 components"):
        parse_cx("45^^^&1.2.3&ISO^NH", allow_type_code=False)


@pytest.mark.parametrize("value, message", [
    ("", "CX.1"),
    ("45", "CX.4"),
    ("45^^^", "CX.4"),
    ("^^^&1.2.840.113519.6.197&ISO", "CX.1"),
    ("45^^^123&1.2.840.113519.6.197&ISO", "namespace"),
    ("45^^^&LOL&ISO", "not an OID"),
    ("45^^^&1.2.840.113519.6.197", "3 subcomponents"),
    ("45^^^&1.2.840.113519.6.197&LOL", "'ISO'"),
    ("45^1^^&1.2.3&ISO", "CX.2 and CX.3"),
    ("45^^M10^&1.2.3&ISO", "CX.2 and CX.3"),
    ("45^^^&1.2.3&ISO^NH^FAC", "at most 5 components"),
    ("45&x^^^&1.2.3&ISO", "CX.1"),
    ("45^^^&1.2.3&ISO~46^^^&1.2.3&ISO", "repetitions"),
    ("1^^^&1.2.3.4&ISO';'2^^^&1.2.3.4&ISO", "components"),         # IPF bad case
    ("jd12323^^^wsh", "3 subcomponents"),                            # IHE sample, not an OID AA
])
def test_parse_cx_rejects_with_a_readable_message(value, message):
    with pytest.raises(HL7TypeError, match=message):
        parse_cx(value)


# --------------------------------------------------------------------------- XCN


@pytest.mark.parametrize("value", [
    "^Smitty^Gerald^^^",                                                   # NIST
    "^Dopplemeyer^Sherry^^^Dr^MD",
    "1234^Mustermann^Max^^^PharmDr.^^^&1.2.40.0.34.99.10.2.1.1.11504&ISO",  # IPF sample
    "801234567890^DUPONT^JEAN^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",     # DMP authorPerson
    "12345^John^Smith^^^Dr^MD",                                            # id + name, no AA
    "801234567890^^^^^^^^&1.2.250.1.71.4.2.1&ISO",                         # id + AA, no name
    "^^Jean",                                                              # given name only
])
def test_check_xcn_accepts(value):
    check_xcn(value)


@pytest.mark.parametrize("value, message", [
    ("", "id .* or a name"),
    ("^^^^^Dr", "id .* or a name"),
    ("801234567890", "XCN.9"),                                   # id alone: AA required
    ("Gerald Smitty", "XCN.9"),                                  # old IHE sample
    ("1234^Mustermann^^^^^^^&LOL&ISO", "not an OID"),
    ("1234^Mustermann^^^^^^^NS&1.2.3&ISO", "namespace"),
    ("^A^B~^C^D", "repetitions"),
])
def test_check_xcn_rejects(value, message):
    with pytest.raises(HL7TypeError, match=message):
        check_xcn(value)


def test_check_xcn_assigning_authority_requirement_can_be_relaxed():
    check_xcn("Gerald Smitty", require_assigning_authority=False)


# --------------------------------------------------------------------------- XON


@pytest.mark.parametrize("value", [
    "Cleveland Clinic",
    "Cleveland Clinic^^^^^&1.2.3&ISO^^^^CleveClin",                        # NIST
    "Parma Community^^^^^^^^^1.2.3",
    "Städt. Krankenhaus OS^^^^^^^^^1.2.276.0.76.3.1.324",
    "Hopital X^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^11234567890",           # DMP, XON.7 IDNST
])
def test_check_xon_accepts(value):
    check_xon(value)


@pytest.mark.parametrize("value, message", [
    ("", "XON.1"),
    ("^^^^^^^^^1.2.3", "XON.1"),
    ("Parma^^^^^^^^^CleveClin", "not an OID"),
    ("Parma^^^^^&LOL&ISO^^^^x", "not an OID"),
    ("Parma^^^^^&1.2.3&L^^^^x", "'ISO'"),
    ("Parma^^^^^^^^^1.2.3^extra", "at most 10"),
])
def test_check_xon_rejects(value, message):
    with pytest.raises(HL7TypeError, match=message):
        check_xon(value)


# --------------------------------------------------------------------------- XTN


@pytest.mark.parametrize("value", [
    "^^Internet^john.doe@healthcare.example.org",      # NIST
    "^NET^Internet^medecin@hopital.fr",
    "^WPN^PH^^33^1^45678901",
    "^PRN^CP^^^^0601020304",
    "^WPN^FX^^^^^^^^^+33 1 23 45 67 89",                # XTN.12 unformatted
    "^^X.400^C=FR;A=;P=X;S=Y",
])
def test_check_xtn_accepts(value):
    check_xtn(value)


@pytest.mark.parametrize("value, message", [
    ("", "XTN.3"),
    ("^NET^^a@b.c", "XTN.3"),
    ("^NET^Email^a@b.c", "Table 0202"),
    ("^NET^Internet", "XTN.4"),
    ("^NET^Internet^not-an-address", "e-mail"),
    ("^WPN^PH", "XTN.7"),
    ("^WPN^PH^^33^1^45-67", "numeric"),
    ("^WPN^PH^^+33^^4567", "numeric"),
])
def test_check_xtn_rejects(value, message):
    with pytest.raises(HL7TypeError, match=message):
        check_xtn(value)


# --------------------------------------------------------------------------- DTM


@pytest.mark.parametrize("value, low, high", [
    ("2004", 20040101000000, 20041231235959),
    ("200402", 20040201000000, 20040229235959),          # leap year
    ("200302", 20030201000000, 20030228235959),
    ("20041224", 20041224000000, 20041224235959),
    ("2004122308", 20041223080000, 20041223085959),
    ("200412230801", 20041223080100, 20041223080159),
    ("20041225235050", 20041225235050, 20041225235050),
])
def test_dtm_padding_covers_the_whole_period(value, low, high):
    dtm = parse_dtm(value)
    assert str(dtm) == dtm.value == value
    assert dtm.padded_min() == low
    assert dtm.padded_max() == high
    assert dtm.precision == len(value)


def test_dtm_to_datetime_is_the_first_instant():
    assert parse_dtm("200412").to_datetime() == datetime(2004, 12, 1)


@pytest.mark.parametrize("value", [
    "", "200", "20041", "2004122", "200412241", "2004-12-24", "20041224T1000",
    "20041224100000+0100", "20041224100000.5", "0000", "200413", "200400",
    "20040230", "20230229", "20041200", "2004122424", "200412242360", "20041224235960",
    "２００４",  # non-ASCII digits
])
def test_parse_dtm_rejects(value):
    with pytest.raises(HL7TypeError, match="DTM"):
        parse_dtm(value)


def test_parse_dtm_accepts_leap_day():
    assert parse_dtm("20240229").padded_max() == 20240229235959


_datetimes = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


def _digits(moment: datetime) -> str:
    return f"{moment.year:04d}{moment:%m%d%H%M%S}"


@given(moment=_datetimes, precision=st.sampled_from([4, 6, 8, 10, 12, 14]))
def test_dtm_round_trips_any_truncated_timestamp(moment, precision):
    full = _digits(moment)
    text = full[:precision]
    dtm = parse_dtm(text)
    assert dtm.value == str(dtm) == text
    assert dtm.padded_min() <= int(full) <= dtm.padded_max()
    low, high = f"{dtm.padded_min():014d}", f"{dtm.padded_max():014d}"
    assert low.startswith(text) and high.startswith(text)
    assert parse_dtm(low).padded_min() == dtm.padded_min()   # the bounds are valid DTMs
    assert parse_dtm(high).padded_max() == dtm.padded_max()


@given(a=_datetimes, precision=st.sampled_from([4, 6, 8, 10, 12, 14]), b=_datetimes)
def test_dtm_range_equals_prefix_match(a, precision, b):
    # a 14-digit instant lies in [padded_min, padded_max] iff the DTM is its prefix
    prefix = _digits(a)[:precision]
    other = _digits(b)
    dtm = parse_dtm(prefix)
    assert (dtm.padded_min() <= int(other) <= dtm.padded_max()) == other.startswith(prefix)


@given(year=st.integers(1, 9999), month=st.integers(1, 12))
def test_dtm_month_max_is_the_last_day(year, month):
    last = calendar.monthrange(year, month)[1]
    expected = int(f"{year:04d}{month:02d}{last:02d}235959")
    assert parse_dtm(f"{year:04d}{month:02d}").padded_max() == expected


# --------------------------------------------------------------------------- OID / UUID


@pytest.mark.parametrize("value", [
    "1.2.250.1.213.1.4.8", "2.16.840.1.113883.6.1", "0.9.2342", "1.0", "3.4.5",
    "1.3.6.1.4.1.21367.2005.3.7",
])
def test_is_oid_accepts(value):
    assert is_oid(value)


@pytest.mark.parametrize("value", [
    "", "1", "1.", ".1", "1..2", "01.2", "1.02", "1.2.a", "urn:oid:1.2.3", " 1.2", "1.2 ",
    "1." + "2" * 63,  # 65 characters
    "1,2", "-1.2", "1.2.٣",
])
def test_is_oid_rejects(value):
    assert not is_oid(value)


_arcs = st.lists(st.integers(min_value=0, max_value=10**12), min_size=2, max_size=30)


@given(arcs=_arcs)
def test_is_oid_accepts_dotted_numbers_up_to_64_chars(arcs):
    oid = ".".join(map(str, arcs))
    assert is_oid(oid) == (len(oid) <= 64)


@given(arcs=_arcs, index=st.integers(min_value=0), zeros=st.integers(min_value=1, max_value=3))
def test_is_oid_rejects_leading_zeros(arcs, index, zeros):
    arcs = [str(a) for a in arcs]
    i = index % len(arcs)
    arcs[i] = "0" * zeros + arcs[i]
    assert not is_oid(".".join(arcs))


@pytest.mark.parametrize("value", [
    "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",
    "URN:UUID:7EDCA82F-054D-47F2-A032-9B2A5B5186C1",
    "urn:uuid:00000000-0000-0000-0000-000000000000",
])
def test_is_uuid_urn_accepts(value):
    assert is_uuid_urn(value)


@pytest.mark.parametrize("value", [
    "", "7edca82f-054d-47f2-a032-9b2a5b5186c1", "urn:uuid:{7edca82f-054d-47f2-a032-9b2a5b5186c1}",
    "urn:uuid:7edca82f054d47f2a0329b2a5b5186c1", "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c",
    "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1 ", "urn:uuid:7edca82g-054d-47f2-a032-9b2a5b5186c1",
    "Document01", "urn:oid:1.2.3",
    "urn:uu\u0130d:7edca82f-054d-47f2-a032-9b2a5b5186c1",  # Unicode case folding is not ASCII
])
def test_is_uuid_urn_rejects(value):
    assert not is_uuid_urn(value)


@given(u=st.uuids())
def test_is_uuid_urn_accepts_any_uuid(u):
    assert is_uuid_urn(f"urn:uuid:{u}")
    assert is_uuid_urn(f"urn:uuid:{str(u).upper()}")


def test_cx_match_key_ignores_type_code_and_namespace_but_not_the_authority():
    from registry.hl7types import cx_match_key
    key = "180057512345627^^^&1.2.250.1.213.1.4.8&ISO"
    assert cx_match_key(key + "^NH") == key
    assert cx_match_key("180057512345627^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^NH") == key
    assert cx_match_key("180057512345627^^^&1.2.250.1.213.1.4.9&ISO") != key
    assert cx_match_key("123^^^HOSP") == "123^^^HOSP"
    assert cx_match_key(" 123 ") == "123"
