"""Syslog framing and parsing for ITI-20 (RFC 5424 header, RFC 5425 octet counting,
RFC 6587 LF framing, RFC 5426 datagrams): pure functions, bytes in, events out."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atna.syslog import (
    BOM,
    Frame,
    FramingError,
    StreamFramer,
    SyslogError,
    format_rfc5424,
    octet_frame,
    parse_rfc5424,
    parse_structured_data,
)

AUDIT = b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>\xc3\xa9</AuditMessage>'


def _feed_in_pieces(framer: StreamFramer, data: bytes, cuts: list[int]):
    events = []
    prev = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        events += framer.feed(data[prev:cut])
        prev = cut
    return events


messages = st.lists(st.binary(min_size=1, max_size=300).map(lambda b: b"<13>1 - - - - - - " + b),
                    min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_rfc5425_octet_counting_yields_every_frame_whatever_the_tcp_segmentation(msgs, cuts):
    stream = b"".join(octet_frame(m) for m in msgs)
    events = _feed_in_pieces(StreamFramer(), stream, cuts)
    assert events == [Frame(m) for m in msgs]


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=200).map(lambda b: b"<13>1 - - - - - - "
                                                 + b.replace(b"\n", b" ").replace(b"\r", b" ")),
                      min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_rfc6587_lf_framing_fallback(lines, cuts):
    stream = b"".join(line + b"\n" for line in lines)
    events = _feed_in_pieces(StreamFramer(), stream, cuts)
    assert events == [Frame(line) for line in lines]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_framer_and_parser_never_raise_on_arbitrary_bytes(data, cuts):
    framer = StreamFramer(max_frame=512)
    for event in _feed_in_pieces(framer, data, cuts):
        assert isinstance(event, (Frame, FramingError))
        if isinstance(event, Frame):
            assert len(event.data) <= 512
            try:
                parse_rfc5424(event.data)
            except SyslogError:
                pass
    assert framer.pending <= 512 + 16


def test_frame_over_the_cap_is_a_framing_error_and_the_stream_closes():
    framer = StreamFramer(max_frame=1000)
    events = framer.feed(b"1001 <13>1 ")
    assert isinstance(events[0], FramingError) and "cap" in events[0].reason
    assert framer.closed and framer.feed(octet_frame(b"<13>1 - - - - - -")) == []


def test_invalid_msg_len_is_a_framing_error():
    assert isinstance(StreamFramer().feed(b"012 <13>1 - - - - - -")[0], FramingError)
    assert isinstance(StreamFramer().feed(b"hello world\n")[0], FramingError)
    assert isinstance(StreamFramer(max_frame=100).feed(b"1234567 ")[0], FramingError)


def test_rfc5424_header_fields_bom_strip_and_trailing_lf():
    data = (b'<85>1 2026-11-28T10:00:00.123Z node.example app 1234 IHE+RFC-3881 '
            b'[opendmp@32473 origin="abc" seq="42"][x@1 a="q\\"]"] ' + BOM + AUDIT + b"\n")
    m = parse_rfc5424(data)
    assert (m.facility, m.severity, m.version) == (10, 5, 1)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("node.example", "app", "1234", "IHE+RFC-3881")
    assert m.msg == AUDIT
    assert m.sd_params == {"opendmp@32473": {"origin": "abc", "seq": "42"}, "x@1": {"a": 'q"]'}}


def test_rfc5424_nil_values_and_empty_message():
    m = parse_rfc5424(b"<14>1 - - - - - -")
    assert m.timestamp is m.hostname is m.app_name is m.procid is m.msgid is m.structured_data is None
    assert m.msg == b""


@pytest.mark.parametrize("bad", [
    b"no header at all", b"<999>1 - - - - - - x", b"<13>1 - - - - - [unterminated x",
    b"<13>1 - - - - - [a@1 b=\"c\"]x", b"<13>0 - - - - - - x",
])
def test_rfc5424_malformed_headers_are_refused(bad):
    with pytest.raises(SyslogError):
        parse_rfc5424(bad)


@settings(max_examples=200, deadline=None)
@given(xml=st.binary(max_size=500), host=st.text(max_size=40), seq=st.integers(0, 2**62),
       origin=st.text(alphabet="abcdef0123456789", min_size=1, max_size=32))
def test_format_then_parse_round_trip(xml, host, seq, origin):
    when = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=timezone.utc)
    data = format_rfc5424(xml, hostname=host or "h", timestamp=when,
                          structured_data={"opendmp@32473": {"origin": origin, "seq": str(seq)}})
    m = parse_rfc5424(data)
    expected = xml[len(BOM):] if xml.startswith(BOM) else xml
    assert m.msg == expected.rstrip(b"\r\n") if expected.endswith(b"\n") else m.msg == expected
    assert m.sd_params["opendmp@32473"] == {"origin": origin, "seq": str(seq)}
    assert m.timestamp == "2026-11-28T10:00:00.123456Z" and (m.facility, m.severity) == (10, 5)


def test_parse_structured_data_tolerates_garbage():
    assert parse_structured_data("[bad") == {}
    assert parse_structured_data(None) == {}
