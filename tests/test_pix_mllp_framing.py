"""MLLP framing (pix.mllp.decode_frame / read_frame over python-hl7's HL7StreamReader):
property-based: any messages, cut into any chunks, come out whole and in order; bytes
that are not MLLP are a FramingError; over-limit blocks are Oversized."""
from __future__ import annotations

import asyncio

import pytest
from hl7.mllp import HL7StreamReader
from hypothesis import given, settings
from hypothesis import strategies as st

from pix.mllp import FramingError, Oversized, decode_frame, read_frame

payload = st.binary(min_size=1, max_size=300).filter(
    lambda b: b"\x1c\r" not in b and b"\x0b" not in b)


def frame(p: bytes) -> bytes:
    return b"\x0b" + p + b"\x1c\r"


def run_reader(data_chunks: list[bytes], limit: int = 1 << 16):
    async def go():
        reader = HL7StreamReader(limit=limit)
        for c in data_chunks:
            reader.feed_data(c)
        reader.feed_eof()
        out = []
        while True:
            p = await read_frame(reader)
            if p is None:
                return out
            out.append(p)
    return asyncio.run(go())


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


@settings(max_examples=200, deadline=None)
@given(st.lists(payload, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=20),
       st.sampled_from([b"", b"\r\n", b"\n"]))
def test_mllp_frames_survive_any_chunking(messages, cuts, between):
    data = between.join(frame(m) for m in messages) + between
    assert run_reader(chunks(data, cuts)) == messages


@settings(max_examples=200, deadline=None)
@given(payload, st.binary(min_size=1, max_size=20).filter(
    lambda b: b.strip(b" \t\r\n") != b"" and b"\x1c\r" not in b))
def test_mllp_garbage_before_start_block_is_a_framing_error(message, garbage):
    data = garbage + frame(message)
    if data.lstrip(b" \t\r\n").startswith(b"\x0b"):
        return  # garbage was only whitespace + a start block: valid
    with pytest.raises(FramingError):
        run_reader([data])


@given(payload)
def test_mllp_connection_closed_inside_a_block_is_a_framing_error(message):
    with pytest.raises(FramingError):
        run_reader([b"\x0b" + message])


def test_mllp_missing_end_block_then_new_start_block_is_a_framing_error():
    with pytest.raises(FramingError):
        run_reader([b"\x0bMSH|first\x0bMSH|second\x1c\r"])


@given(st.integers(50, 500))
def test_mllp_block_over_the_limit_is_oversized(limit):
    with pytest.raises(Oversized):
        run_reader([frame(b"M" * (limit + 10))], limit=limit)


def test_decode_frame_pure():
    assert decode_frame(b"\r\n\x0bABC\x1c\r") == b"ABC"
    with pytest.raises(FramingError):
        decode_frame(b"ABC\x1c\r")
    with pytest.raises(FramingError):
        decode_frame(b"\x0bABC")
