"""Wire formats: events (msgpack + array extension), requests/responses/dead letters (JSON)."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stages.codec import (
    ARRAY_EXT,
    CodecError,
    DeadLetterCodec,
    EventCodec,
    RequestCodec,
    ResponseCodec,
    to_response,
)
from stages.events import MAX_CANDIDATES, MAX_K, DeadLetter, Event, Request, Response

INT63 = 2**63 - 1
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ARRAY_FIELDS: dict[str, np.dtype[Any]] = {
    "candidates": np.dtype(np.int64),
    "exclude": np.dtype(np.int64),
    "user_vec": np.dtype(np.float32),
    "item_vecs": np.dtype(np.float32),
    "scores": np.dtype(np.float32),
    "items": np.dtype(np.int64),
    "top_scores": np.dtype(np.float32),
}
# Position of each field in the array_like msgpack encoding, for path assertions.
FIELD_INDEX = {name: i for i, name in enumerate(Event.__struct_fields__)}


# --- strategies ------------------------------------------------------------------------------


def _vec(dtype: type[np.generic], max_side: int = 12) -> st.SearchStrategy[npt.NDArray[Any]]:
    # Any bit pattern, incl. NaN payloads and -0.0: the codec must carry bytes, not values.
    return hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=max_side)
    )


def _mat() -> st.SearchStrategy[npt.NDArray[np.float32]]:
    return hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6))


context_values = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**63), INT63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
contexts = st.dictionaries(st.text(max_size=8), context_values, max_size=5)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        v=draw(st.integers(0, 5)),
        request_id=draw(st.text(max_size=20)),
        user_id=draw(st.integers(0, INT63)),
        deadline_ms=draw(finite),
        created_at_ms=draw(finite),
        k=draw(st.integers(1, MAX_K)),
        priority=draw(st.integers(0, 9)),
        candidates=draw(_vec(np.int64)),
        exclude=draw(_vec(np.int64)),
        context=draw(contexts),
        status=draw(st.sampled_from(["ok", "expired", "shed", "invalid"])),
        reason=draw(st.text(max_size=10)),
        stamps=draw(st.dictionaries(st.text(max_size=6), finite, max_size=5)),
        user_vec=draw(st.none() | _vec(np.float32)),
        item_vecs=draw(st.none() | _mat()),
        missing=draw(st.integers(0, 1000)),
        scores=draw(st.none() | _vec(np.float32)),
        items=draw(st.none() | _vec(np.int64)),
        top_scores=draw(st.none() | _vec(np.float32)),
    )


def _event(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "v": 1,
        "request_id": "r1",
        "user_id": 7,
        "deadline_ms": 2000.0,
        "created_at_ms": 1000.0,
        "k": 3,
        "priority": 0,
        "candidates": np.array([4, 5, 6], dtype=np.int64),
        "exclude": np.zeros(0, dtype=np.int64),
        "context": {},
    }
    base.update(kw)
    return Event(**base)


def assert_same_array(got: Any, want: npt.NDArray[Any]) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.shape == want.shape
    # Bit-exact (NaN payloads, -0.0), and in native byte order whatever the original's order.
    assert got.tobytes() == want.astype(want.dtype.newbyteorder("=")).tobytes()


def assert_same_event(got: Event, want: Event) -> None:
    for name in Event.__struct_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if name in ARRAY_FIELDS:
            if w is None:
                assert g is None, name
            else:
                assert_same_array(g, w)
        elif name == "context":
            assert g == w
            # bool must stay bool, 1.0 must stay float: compare types too.
            assert {k: type(v) for k, v in g.items()} == {k: type(v) for k, v in w.items()}
        elif name == "stamps":
            assert list(g.items()) == list(w.items())  # order matters for to_response
        else:
            assert g == w, name
            assert type(g) is type(w), name


def _ext(code: int, shape: tuple[int, ...], payload: bytes) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(
        ARRAY_EXT, struct.pack(f"<BB{len(shape)}I", code, len(shape), *shape) + payload
    )


def _raw_event(candidates: Any, **extra: Any) -> bytes:
    """An event on the wire, with array slots filled by hand-made (possibly bad) values."""
    empty = _ext(2, (0,), b"")
    fields: list[Any] = [1, "r", 1, 1.0, 0.0, 1, 0, candidates, empty, {}, "ok", "", {}]
    fields += [None, None, 0, None, None, None, 0]
    assert len(fields) == len(Event.__struct_fields__)
    for name, value in extra.items():
        fields[FIELD_INDEX[name]] = value
    return msgspec.msgpack.Encoder().encode(fields)


# --- events ----------------------------------------------------------------------------------


@FAST
@given(events())
def test_event_round_trip(event: Event) -> None:
    codec = EventCodec()
    assert_same_event(codec.decode(codec.encode(event)), event)


def test_event_round_trip_empty_arrays_and_none_optionals() -> None:
    codec = EventCodec()
    ev = _event(
        candidates=np.zeros(0, np.int64),
        item_vecs=np.zeros((0, 8), np.float32),
        scores=np.zeros(0, np.float32),
    )
    back = codec.decode(codec.encode(ev))
    assert_same_event(back, ev)
    assert back.item_vecs is not None and back.item_vecs.shape == (0, 8)
    assert back.user_vec is None and back.items is None and back.top_scores is None


def test_event_round_trip_2d_item_vecs_values() -> None:
    codec = EventCodec()
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    back = codec.decode(codec.encode(_event(item_vecs=vecs)))
    assert back.item_vecs is not None
    assert back.item_vecs.shape == (3, 4)
    np.testing.assert_array_equal(back.item_vecs, vecs)
    np.testing.assert_array_equal(back.item_vecs[2], vecs[2])


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # strided
        lambda: np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        lambda: np.arange(12, dtype=np.float32).reshape(3, 4).T,
    ],
)
def test_non_contiguous_arrays_travel_by_value(make: Any) -> None:
    vecs = make()
    codec = EventCodec()
    back = codec.decode(codec.encode(_event(item_vecs=vecs)))
    assert back.item_vecs is not None
    assert back.item_vecs.shape == vecs.shape
    np.testing.assert_array_equal(back.item_vecs, vecs)


@FAST
@given(
    cands=hnp.arrays(np.dtype(">i8"), st.integers(0, 10)),
    vec=hnp.arrays(np.dtype(">f4"), st.integers(0, 10)),
    mat=hnp.arrays(np.dtype(">f4"), st.tuples(st.integers(0, 4), st.integers(0, 4))),
)
def test_big_endian_arrays_are_encoded_little_endian(
    cands: npt.NDArray[Any], vec: npt.NDArray[Any], mat: npt.NDArray[Any]
) -> None:
    codec = EventCodec()
    big = _event(candidates=cands, user_vec=vec, item_vecs=mat)
    little = _event(
        candidates=cands.astype("<i8"), user_vec=vec.astype("<f4"), item_vecs=mat.astype("<f4")
    )
    wire = codec.encode(big)
    assert wire == codec.encode(little)  # byte-identical on the wire
    back = codec.decode(wire)
    assert_same_event(back, little)
    assert back.candidates.dtype.str == "<i8"


def test_big_endian_values_explicitly() -> None:
    codec = EventCodec()
    cands = np.array([1, 256, 2**40], dtype=">i8")
    back = codec.decode(codec.encode(_event(candidates=cands)))
    assert back.candidates.tolist() == [1, 256, 2**40]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint64, np.complex64, np.int16, np.dtype(">u2")])
def test_unsupported_dtype_refused_at_encode(dtype: Any) -> None:
    with pytest.raises(TypeError, match="cannot travel"):
        EventCodec().encode(_event(candidates=np.zeros(3, dtype=dtype)))


def test_zero_dimensional_array_keeps_its_shape() -> None:
    codec = EventCodec()
    back = codec.decode(codec.encode(_event(user_vec=np.array(2.5, dtype=np.float32))))
    assert back.user_vec is not None
    assert back.user_vec.shape == ()
    assert float(back.user_vec) == 2.5


def test_numpy_scalars_in_context_encode_as_python_values() -> None:
    codec = EventCodec()
    ev = _event(context={"a": np.int64(3), "b": np.float32(0.5), "c": np.bool_(True)})
    back = codec.decode(codec.encode(ev))
    assert back.context == {"a": 3, "b": 0.5, "c": True}
    assert [type(v) for v in back.context.values()] == [int, float, bool]


def test_decoded_arrays_are_read_only_views() -> None:
    codec = EventCodec()
    back = codec.decode(codec.encode(_event()))
    with pytest.raises(ValueError):
        back.candidates[0] = 1


@FAST
@given(events(), st.data())
def test_truncated_event_is_a_codec_error(event: Event, data: st.DataObject) -> None:
    codec = EventCodec()
    wire = codec.encode(event)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(CodecError, match="not a jizhi event"):
        codec.decode(wire[:cut])


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        (msgspec.msgpack.Ext(ARRAY_EXT, b""), "truncated"),
        (msgspec.msgpack.Ext(ARRAY_EXT, b"\x02"), "truncated"),
        (msgspec.msgpack.Ext(ARRAY_EXT, b"\x02\x01\x03\x00"), "shape is truncated"),
        (_ext(99, (1,), b"\0" * 8), "unknown dtype code 99"),
        (_ext(0, (1,), b"\0" * 8), "unknown dtype code 0"),
        (_ext(2, (3,), b"\0" * 16), "holds 16 bytes"),  # one element short
        (_ext(2, (3,), b"\0" * 25), "holds 25 bytes"),  # one byte too many
        (_ext(2, (2, 2), b"\0" * 24), "holds 24 bytes"),
        # dims whose product overflows int64 to 0: must not "fit" an empty payload
        (_ext(2, (65536, 65536, 65536, 65536), b""), "holds 0 bytes"),
        # 4 * 5 * 5581 * 8681 * 49477 * 384773 == 2**64 + 4: wraps to 4 in int64
        (_ext(2, (4 * 5 * 5581, 8681, 49477, 384773), b"\0" * 32), "holds 32 bytes"),
        (msgspec.msgpack.Ext(2, b"\x02\x01\x00\x00\x00\x00"), "unknown msgpack extension type 2"),
        (_ext(6, (1,), b"\0" * 8), r"expected an array of int64, got float64 - at `\$\[7\]`"),
        (_ext(1, (2,), b"\0" * 8), r"expected an array of int64, got float32 - at `\$\[7\]`"),
        ([1, 2, 3], r"expected an array extension, got list - at `\$\[7\]`"),
        (None, r"expected an array extension, got NoneType - at `\$\[7\]`"),
    ],
)
def test_corrupt_array_extension_is_a_codec_error(candidates: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        EventCodec().decode(_raw_event(candidates))


def test_wrong_dtype_in_optional_field_names_its_position() -> None:
    raw = _raw_event(_ext(2, (0,), b""), item_vecs=_ext(6, (1, 1), b"\0" * 8))
    with pytest.raises(CodecError, match=rf"got float64 - at `\$\[{FIELD_INDEX['item_vecs']}\]`"):
        EventCodec().decode(raw)


def test_hand_made_valid_extension_decodes() -> None:
    ev = EventCodec().decode(_raw_event(_ext(2, (2,), struct.pack("<2q", 5, -1))))
    assert ev.candidates.tolist() == [5, -1]
    assert ev.candidates.dtype == np.int64


def test_array_where_scalar_expected_is_a_codec_error() -> None:
    raw = msgspec.msgpack.Encoder().encode(
        [1, _ext(2, (0,), b""), 1, 1.0, 0.0, 1, 0, _ext(2, (0,), b""), _ext(2, (0,), b""), {}]
    )
    with pytest.raises(CodecError, match=r"\$\[1\]"):
        EventCodec().decode(raw)


@FAST
@given(events(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
def test_corrupted_event_bytes_never_crash(event: Event, flips: list[tuple[int, int]]) -> None:
    codec = EventCodec()
    wire = bytearray(codec.encode(event))
    for pos, byte in flips:
        wire[pos % len(wire)] = byte
    try:
        back = codec.decode(bytes(wire))
    except CodecError:
        return
    # Whatever decodes is well-formed: arrays of the declared dtypes, sizes matching shapes.
    for name, dtype in ARRAY_FIELDS.items():
        a = getattr(back, name)
        if a is not None:
            assert a.dtype == dtype
            assert a.nbytes == a.size * dtype.itemsize


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        EventCodec().decode(data)


def test_deeply_nested_event_is_a_codec_error() -> None:
    wire = EventCodec().encode(_event())
    n = len(Event.__struct_fields__)
    assert wire[:3] == b"\xdc" + struct.pack(">H", n)  # array16 header
    # The same event with one extra trailing field, nested 100k deep.
    head = b"\xdc" + struct.pack(">H", n + 1) + wire[3:]
    with pytest.raises(CodecError):
        EventCodec().decode(head + b"\x91" * 100_000 + b"\xc0")


# --- requests --------------------------------------------------------------------------------

json_context_values = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**63), INT63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    ids = st.integers(0, INT63)
    return Request(
        request_id=draw(st.text(min_size=1, max_size=128)),
        user_id=draw(ids),
        candidates=draw(st.lists(ids, min_size=1, max_size=30)),
        k=draw(st.integers(1, MAX_K)),
        deadline_ms=draw(st.none() | st.integers(0, 2**53)),
        timeout_ms=draw(st.none() | st.integers(1, 10**9)),
        priority=draw(st.integers(0, 9)),
        created_at_ms=draw(st.none() | st.floats(0, 1e15)),
        exclude=draw(st.lists(ids, max_size=5)),
        context=draw(st.dictionaries(st.text(max_size=8), json_context_values, max_size=5)),
        v=draw(st.integers(0, 3)),
    )


@FAST
@given(requests())
def test_request_round_trip(request: Request) -> None:
    codec = RequestCodec()
    wire = codec.encode(request)
    back = codec.decode(wire)
    assert back == request
    assert {k: type(v) for k, v in back.context.items()} == {
        k: type(v) for k, v in request.context.items()
    }
    assert json.loads(wire)["request_id"] == request.request_id  # plain JSON for any client


def test_request_defaults_and_unknown_fields() -> None:
    r = RequestCodec().decode(b'{"request_id":"a","user_id":1,"candidates":[3],"extra":{"x":1}}')
    assert r == Request(request_id="a", user_id=1, candidates=[3])
    assert (r.k, r.priority, r.deadline_ms, r.timeout_ms, r.exclude, r.context, r.v) == (
        10,
        0,
        None,
        None,
        [],
        {},
        1,
    )


GOOD: dict[str, Any] = {"request_id": "a", "user_id": 1, "candidates": [1, 2, 3]}


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"candidates": [1, -2, 3]}, "$.candidates[1]"),
        ({"candidates": [1, 2, 2**63]}, "$.candidates[2]"),
        ({"candidates": [1, "2"]}, "$.candidates[1]"),
        ({"candidates": []}, "$.candidates"),
        ({"candidates": list(range(MAX_CANDIDATES + 1))}, "$.candidates"),
        ({"k": 0}, "$.k"),
        ({"k": MAX_K + 1}, "$.k"),
        ({"k": "3"}, "$.k"),
        ({"k": 2.5}, "$.k"),
        ({"request_id": ""}, "$.request_id"),
        ({"request_id": "x" * 129}, "$.request_id"),
        ({"request_id": 5}, "$.request_id"),
        ({"user_id": -1}, "$.user_id"),
        ({"user_id": True}, "$.user_id"),
        ({"priority": 10}, "$.priority"),
        ({"deadline_ms": -1}, "$.deadline_ms"),
        ({"timeout_ms": 0}, "$.timeout_ms"),
        ({"created_at_ms": -0.5}, "$.created_at_ms"),
        ({"exclude": [3, -1]}, "$.exclude[1]"),
        ({"context": {"a": [1]}}, "$.context[...]"),
        ({"context": {"a": None}}, "$.context[...]"),
        ({"v": "1"}, "$.v"),
    ],
)
def test_invalid_request_names_json_path(patch: dict[str, Any], path: str) -> None:
    with pytest.raises(CodecError) as info:
        RequestCodec().decode(json.dumps({**GOOD, **patch}).encode())
    assert str(info.value).endswith(f"- at `{path}`")


@pytest.mark.parametrize("missing", ["request_id", "user_id", "candidates"])
def test_missing_required_field_is_named(missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(CodecError, match=f"missing required field `{missing}`"):
        RequestCodec().decode(json.dumps(body).encode())


@FAST
@given(st.lists(st.integers(0, INT63), min_size=1, max_size=20), st.data())
def test_bad_candidate_path_names_its_index(cands: list[int], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(cands) - 1))
    bad = data.draw(st.integers(max_value=-1) | st.integers(min_value=2**63))
    cands[i] = bad
    body = json.dumps({**GOOD, "candidates": cands}).encode()
    with pytest.raises(CodecError, match=rf"at `\$\.candidates\[{i}\]`"):
        RequestCodec().decode(body)


@pytest.mark.parametrize(
    "data", [b"", b"nope", b"[1, 2]", b'"str"', b"{", b'{"request_id": "a",}', b"\xff\xfe"]
)
def test_non_request_json_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        RequestCodec().decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_request_decode_of_arbitrary_bytes_only_raises_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        RequestCodec().decode(data)


BAD_UTF8 = [
    b'{"request_id":"a\xfa","user_id":1,"candidates":[1]}',
    b'{"request_id":"a","user_id":1,"candidates":[1],"context":{"k":"\xc3("}}',
    b'{"request_id":"a","user_id":1,"candidates":[1],"context":{"\xff":1}}',
]


@pytest.mark.parametrize("data", BAD_UTF8)
def test_invalid_utf8_in_a_string_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        RequestCodec().decode(data)
    with pytest.raises(CodecError):
        ResponseCodec().decode(data)
    with pytest.raises(CodecError):
        DeadLetterCodec().decode(data)


def test_invalid_utf8_in_event_string_is_a_codec_error() -> None:
    wire = EventCodec().encode(_event(request_id="rq"))
    bad = wire.replace(b"\xa2rq", b"\xa2\xff\xfe", 1)
    assert bad != wire
    with pytest.raises(CodecError):
        EventCodec().decode(bad)


DEEP = b'{"request_id":"deep","user_id":3,"z":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_deeply_nested_request_is_a_codec_error_not_recursion_error() -> None:
    with pytest.raises(CodecError):
        RequestCodec().decode(DEEP)


# --- request header recovery -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b'{"request_id":"r-1","user_id":42,"candidates":[1]}', ("r-1", 42)),
        (b'{"request_id":"r-1","user_id":42,"candidates":[-1],"k":0}', ("r-1", 42)),
        (b'{"candidates":"nope","user_id":5,"request_id":"late"}', ("late", 5)),
        (b'{"request_id":"r","user_id":"42"}', ("r", None)),
        (b'{"request_id":"r","user_id":true}', ("r", None)),
        (b'{"request_id":"r","user_id":4.0}', ("r", None)),
        (b'{"request_id":"r","user_id":-3}', ("r", None)),
        (b'{"request_id":"r","user_id":9223372036854775808}', ("r", None)),
        (b'{"request_id":"r","user_id":9223372036854775807}', ("r", 2**63 - 1)),
        (b'{"request_id":"r","user_id":123456789012345678901234567890}', ("r", None)),
        (b'{"request_id":7,"user_id":1}', ("", 1)),
        (b'{"request_id":null}', ("", None)),
        (b"{}", ("", None)),
        (b"[1,2]", ("", None)),
        (b"not json", ("", None)),
        # Truncated: the id is read from the prefix (so the client is answered); a number at the
        # cut may itself be cut, so the user is not trusted.
        (b'{"request_id":"r","user_id":1', ("r", None)),
        (b'{"request_id":"r","user_id":12,"candidates":[1', ("r", 12)),
        (b'{"request_id":"r","user_id":1e400,"candidates":[1]}', ("r", None)),
        (b'{"request_id":"r","user_id":1,"x":NaN}', ("r", 1)),
        (b"", ("", None)),
        (b"\xff\x00\x80", ("", None)),
        (DEEP, ("deep", 3)),  # too deep to decode, but its head is plain
    ],
)
def test_header_recovers_what_it_can(data: bytes, want: tuple[str, int | None]) -> None:
    assert RequestCodec().header(data) == want


def test_header_of_invalid_utf8() -> None:
    codec = RequestCodec()
    assert codec.header(BAD_UTF8[0]) == ("", None)  # the id itself is unreadable
    assert codec.header(BAD_UTF8[1]) == ("a", 1)  # a bad string elsewhere does not matter


def test_header_truncates_long_request_id() -> None:
    rid, uid = RequestCodec().header(json.dumps({"request_id": "x" * 500, "user_id": 1}).encode())
    assert rid == "x" * 128
    assert uid == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_header_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    rid, uid = RequestCodec().header(data)
    assert isinstance(rid, str) and len(rid) <= 128
    assert uid is None or (type(uid) is int and 0 <= uid <= INT63)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@FAST
@given(rid=json_values, uid=json_values, rest=st.dictionaries(st.text(max_size=5), json_values))
def test_header_from_any_json_object(rid: Any, uid: Any, rest: dict[str, Any]) -> None:
    body = {**rest, "request_id": rid, "user_id": uid}
    got_rid, got_uid = RequestCodec().header(json.dumps(body).encode())
    assert got_rid == (rid[:128] if isinstance(rid, str) else "")
    valid_uid = type(uid) is int and 0 <= uid <= INT63
    assert got_uid == (uid if valid_uid else None)


# --- responses and dead letters --------------------------------------------------------------


@st.composite
def responses(draw: st.DrawFn) -> Response:
    return Response(
        request_id=draw(st.text(max_size=20)),
        user_id=draw(st.integers(0, INT63)),
        status=draw(st.sampled_from(["ok", "expired", "shed", "invalid"])),
        items=draw(st.lists(st.integers(-(2**63), INT63), max_size=10)),
        scores=draw(st.lists(finite, max_size=10)),
        latency_ms=draw(finite),
        created_at_ms=draw(finite),
        answered_at_ms=draw(finite),
        stage_ms=draw(st.dictionaries(st.text(max_size=6), finite, max_size=5)),
        missing_embeddings=draw(st.integers(0, 10**6)),
        reason=draw(st.text(max_size=20)),
    )


@FAST
@given(responses())
def test_response_round_trip(response: Response) -> None:
    codec = ResponseCodec()
    wire = codec.encode(response)
    assert codec.decode(wire) == response
    doc = json.loads(wire)
    assert set(doc) == set(Response.__struct_fields__)  # omit_defaults=False: every field present


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'{"request_id":"a"}', "missing required field"),
        (b"garbage", "malformed"),
        (DEEP, None),
    ],
)
def test_bad_response_is_a_codec_error(data: bytes, where: str | None) -> None:
    with pytest.raises(CodecError, match=where):
        ResponseCodec().decode(data)


def test_response_bad_status_names_path() -> None:
    good = ResponseCodec().encode(
        Response("a", 1, "ok", [1], [0.5], 1.0, 0.0, 1.0, {"ingest": 1.0})
    )
    doc = json.loads(good)
    doc["status"] = "maybe"
    with pytest.raises(CodecError, match=r"at `\$\.status`"):
        ResponseCodec().decode(json.dumps(doc).encode())


@FAST
@given(
    stage=st.text(max_size=10),
    reason=st.text(max_size=30),
    payload=st.binary(max_size=100),
    request_id=st.text(max_size=10),
    user_id=st.none() | st.integers(-(2**63), INT63),
)
def test_dead_letter_round_trip(
    stage: str, reason: str, payload: bytes, request_id: str, user_id: int | None
) -> None:
    letter = DeadLetter(stage, reason, payload, request_id=request_id, user_id=user_id)
    codec = DeadLetterCodec()
    wire = codec.encode(letter)
    assert codec.decode(wire) == letter
    assert json.loads(wire)["reason"] == reason  # readable with kcat


@pytest.mark.parametrize(
    "data", [b"{}", b"garbage", b'{"stage":"s","reason":"r","payload":"!!not base64"}', DEEP]
)
def test_bad_dead_letter_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        DeadLetterCodec().decode(data)


# --- to_response -----------------------------------------------------------------------------


@FAST
@given(
    created=st.floats(0, 1e13),
    steps=st.lists(
        st.tuples(st.text(min_size=1, max_size=6), st.floats(0, 1e4)),
        max_size=6,
        unique_by=lambda s: s[0],
    ),
    tail=st.floats(0, 1e4),
)
def test_stage_ms_are_deltas_in_stamp_order(
    created: float, steps: list[tuple[str, float]], tail: float
) -> None:
    stamps: dict[str, float] = {}
    t = created
    for name, dt in steps:
        t += dt
        stamps[name] = t
    now = t + tail
    resp = to_response(_event(created_at_ms=created, stamps=stamps), now)
    assert list(resp.stage_ms) == list(stamps)  # same order as the stamps
    prev = created
    for name, at in stamps.items():
        assert resp.stage_ms[name] == round(at - prev, 3)
        prev = at
    assert resp.latency_ms == round(now - created, 3)
    assert resp.answered_at_ms == now
    assert resp.created_at_ms == created


def test_stage_ms_example() -> None:
    ev = _event(
        created_at_ms=1000.0,
        stamps={"ingest": 1002.5, "features": 1010.0, "embed": 1010.0, "rank": 1011.25},
    )
    resp = to_response(ev, 1012.0)
    assert resp.stage_ms == {"ingest": 2.5, "features": 7.5, "embed": 0.0, "rank": 1.25}
    assert resp.latency_ms == 12.0


def test_stage_ms_follow_insertion_not_sorted_order() -> None:
    ev = _event(created_at_ms=0.0, stamps={"b": 5.0, "a": 8.0})
    assert to_response(ev, 10.0).stage_ms == {"b": 5.0, "a": 3.0}


def test_ok_response_carries_items_and_scores() -> None:
    ev = _event(
        status="ok",
        items=np.array([9, 4, 7], dtype=np.int64),
        top_scores=np.array([0.75, 0.5, 0.25], dtype=np.float32),
        missing=2,
        reason="",
    )
    resp = to_response(ev, 1005.0)
    assert resp.status == "ok"
    assert resp.items == [9, 4, 7]
    assert resp.scores == [0.75, 0.5, 0.25]
    assert all(type(i) is int for i in resp.items)
    assert all(type(s) is float for s in resp.scores)
    assert resp.missing_embeddings == 2
    assert resp.request_id == "r1" and resp.user_id == 7
    ResponseCodec().encode(resp)  # JSON-serialisable as is


@pytest.mark.parametrize("status", ["expired", "shed", "invalid"])
def test_terminal_status_never_carries_items(status: str) -> None:
    ev = _event(
        status=status,
        reason="why",
        items=np.array([1, 2], dtype=np.int64),
        top_scores=np.array([0.5, 0.25], dtype=np.float32),
    )
    resp = to_response(ev, 1001.0)
    assert (resp.status, resp.items, resp.scores, resp.reason) == (status, [], [], "why")


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"items": np.array([1], dtype=np.int64)},
        {"top_scores": np.array([0.5], dtype=np.float32)},
    ],
)
def test_ok_without_rank_output_has_empty_items(kw: dict[str, Any]) -> None:
    resp = to_response(_event(status="ok", **kw), 1001.0)
    assert resp.items == [] and resp.scores == []


@FAST
@given(events(), st.floats(0, 1e13))
def test_to_response_survives_the_wire(event: Event, now: float) -> None:
    codec = EventCodec()
    before = to_response(event, now)
    after = to_response(codec.decode(codec.encode(event)), now)
    assert ResponseCodec().encode(before) == ResponseCodec().encode(after)
