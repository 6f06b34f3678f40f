"""Encoders and decoders, built once and reused on the hot path.

Three wire formats: request JSON in, response JSON out, and msgpack events between stages. numpy
arrays travel as a msgpack extension (type 1) holding a dtype code, the shape and the raw bytes, so
decoding an event's embeddings is a zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from typing import Any, Final, get_args, get_origin

import msgspec
import numpy as np

from stages.events import DeadLetter, Event, Request, Response

ARRAY_EXT: Final = 1
_MAX_USER_ID: Final = 2**63 - 1  # as Request.user_id

_DTYPE_CODES: Final[dict[str, int]] = {"<f4": 1, "<i8": 2, "<f2": 3, "<i4": 4, "|b1": 5, "<f8": 6}
_CODE_DTYPES: Final[dict[int, np.dtype[Any]]] = {c: np.dtype(s) for s, c in _DTYPE_CODES.items()}


class CodecError(ValueError):
    """Bytes that do not decode to what the reader expects; the message says what and where."""


# What msgspec raises on hostile input: besides DecodeError, deep nesting (RecursionError) and
# invalid UTF-8 inside a string (UnicodeDecodeError) escape it as they are.
_DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def _pack_array(a: np.ndarray[Any, Any]) -> msgspec.msgpack.Ext:
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)  # (not unconditionally: it turns a 0-d array into 1-d)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    code = _DTYPE_CODES.get(a.dtype.str)
    if code is None:
        raise TypeError(f"arrays of dtype {a.dtype} cannot travel between stages")
    header = struct.pack(f"<BB{a.ndim}I", code, a.ndim, *a.shape)
    return msgspec.msgpack.Ext(ARRAY_EXT, header + a.tobytes())


def _unpack_array(data: memoryview) -> np.ndarray[Any, Any]:
    if len(data) < 2:
        raise CodecError("array extension is truncated")
    code, ndim = data[0], data[1]
    dtype = _CODE_DTYPES.get(code)
    if dtype is None:
        raise CodecError(f"array extension has unknown dtype code {code}")
    end = 2 + 4 * ndim
    if len(data) < end:
        raise CodecError("array extension shape is truncated")
    shape = struct.unpack_from(f"<{ndim}I", data, 2)
    count = math.prod(shape)  # Python ints: a corrupted shape must not overflow into a "fit"
    if len(data) - end != count * dtype.itemsize:
        raise CodecError(f"array extension holds {len(data) - end} bytes, shape {shape} needs more")
    return np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != ARRAY_EXT:
        raise CodecError(f"unknown msgpack extension type {code}")
    return _unpack_array(data)


@functools.cache
def _declared_dtype(typ: Any) -> np.dtype[Any] | None:
    """``np.int64`` for ``npt.NDArray[np.int64]``; None when the annotation does not say."""
    args = get_args(typ)
    if len(args) == 2:
        scalar = get_args(args[1])
        if len(scalar) == 1 and isinstance(scalar[0], type) and issubclass(scalar[0], np.generic):
            return np.dtype(scalar[0])
    return None


def _dec_hook(typ: Any, obj: Any) -> Any:
    if (get_origin(typ) or typ) is np.ndarray and isinstance(obj, np.ndarray):
        want = _declared_dtype(typ)
        if want is not None and obj.dtype != want:
            raise TypeError(f"expected an array of {want}, got {obj.dtype}")
        return obj
    raise TypeError(f"expected an array extension, got {type(obj).__name__}")


# A top-level-looking ``"request_id": "..."`` (no escapes) near the start of a blob too big to
# parse: enough to answer the client, not a JSON parser.
_PREFIX_ID: Final = re.compile(rb'"request_id"\s*:\s*"([^"\\\x00-\x1f]{1,128})"')
_PREFIX_USER: Final = re.compile(rb'"user_id"\s*:\s*(\d{1,19})[\s,}]')
PREFIX_SCAN_BYTES: Final = 4096


class _RequestHeader(msgspec.Struct, forbid_unknown_fields=False):
    """The part of a request needed to answer it even when the rest is malformed."""

    request_id: object = None
    user_id: object = None


class EventCodec:
    """msgpack for events between stages; one instance per thread that uses it."""

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._dec = msgspec.msgpack.Decoder(Event, ext_hook=_ext_hook, dec_hook=_dec_hook)

    def encode(self, event: Event, /) -> bytes:
        return self._enc.encode(event)

    def decode(self, data: bytes, /) -> Event:
        try:
            return self._dec.decode(data)
        except (*_DECODE_ERRORS, CodecError) as exc:
            raise CodecError(f"not a jizhi event: {exc}") from exc


class RequestCodec:
    """JSON for the requests clients publish."""

    def __init__(self) -> None:
        self._dec = msgspec.json.Decoder(Request)
        self._header = msgspec.json.Decoder(_RequestHeader)
        self._enc = msgspec.json.Encoder()

    def decode(self, data: bytes, /) -> Request:
        """Decode and validate; the error message names the offending path, e.g. ``$.k``."""
        try:
            return self._dec.decode(data)
        except _DECODE_ERRORS as exc:
            raise CodecError(str(exc)) from exc

    def header(self, data: bytes, /) -> tuple[str, int | None]:
        """Best-effort request_id and user_id of a request that failed to decode."""
        try:
            h = self._header.decode(data)
        except _DECODE_ERRORS:
            # Malformed somewhere (``1e400``, bad UTF-8, ``NaN``): the id may still be readable.
            return self.header_prefix(data)
        rid = h.request_id if isinstance(h.request_id, str) else ""
        uid = h.user_id if isinstance(h.user_id, int) and not isinstance(h.user_id, bool) else None
        if uid is not None and not 0 <= uid <= _MAX_USER_ID:
            uid = None
        return rid[:128], uid

    def header_prefix(self, data: bytes, /) -> tuple[str, int | None]:
        """Best-effort request_id and user_id from the first bytes of a payload too big (or too
        broken) to be decoded whole, so that a client which sent one is still answered
        ``invalid``."""
        head = bytes(data[:PREFIX_SCAN_BYTES])
        m = _PREFIX_ID.search(head)
        if m is None:
            return "", None
        try:
            rid = m.group(1).decode()
        except UnicodeDecodeError:
            return "", None
        u = _PREFIX_USER.search(head)
        uid = int(u.group(1)) if u is not None else None
        return rid, uid if uid is not None and uid <= _MAX_USER_ID else None

    def encode(self, request: Request, /) -> bytes:
        return self._enc.encode(request)


class ResponseCodec:
    """JSON for the answers clients read."""

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(Response)

    def encode(self, response: Response, /) -> bytes:
        return self._enc.encode(response)

    def decode(self, data: bytes, /) -> Response:
        try:
            return self._dec.decode(data)
        except _DECODE_ERRORS as exc:
            raise CodecError(str(exc)) from exc


class DeadLetterCodec:
    """JSON for dead letters, so an operator can read them with kcat."""

    def __init__(self) -> None:
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(DeadLetter)

    def encode(self, letter: DeadLetter, /) -> bytes:
        return self._enc.encode(letter)

    def decode(self, data: bytes, /) -> DeadLetter:
        try:
            return self._dec.decode(data)
        except _DECODE_ERRORS as exc:
            raise CodecError(str(exc)) from exc


def to_response(event: Event, now_ms: float) -> Response:
    """The client-facing answer for an event that reached the end or stopped early."""
    stage_ms: dict[str, float] = {}
    prev = event.created_at_ms
    for name, t in event.stamps.items():
        stage_ms[name] = round(t - prev, 3)
        prev = t
    ok = event.status == "ok" and event.items is not None and event.top_scores is not None
    return Response(
        request_id=event.request_id,
        user_id=event.user_id,
        status=event.status,
        items=event.items.tolist() if ok and event.items is not None else [],
        scores=event.top_scores.tolist() if ok and event.top_scores is not None else [],
        latency_ms=round(now_ms - event.created_at_ms, 3),
        created_at_ms=event.created_at_ms,
        answered_at_ms=now_ms,
        stage_ms=stage_ms,
        missing_embeddings=event.missing,
        degraded=event.degraded > 0,
        reason=event.reason,
    )
