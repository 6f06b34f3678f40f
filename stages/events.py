"""The event model: what a request looks like at the edge, between stages, and when answered.

At the edge everything is JSON, so any Kafka client (kcat, Java, Go) can publish a request and read
an answer. Between stages events are msgpack with numpy arrays carried as raw little-endian bytes
(a msgpack extension type), because re-encoding 200 embeddings as JSON floats would cost more than
scoring them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
import numpy as np
import numpy.typing as npt

SCHEMA_VERSION: Final = 1

Status = Literal["ok", "expired", "shed", "invalid", "duplicate"]
"""How a request ended. Only ``ok`` carries items; the others say why it has none. ``duplicate``
answers a repeated ``request_id``: the first copy's answer is the answer, and a client that missed
it must not wait for silence."""

TERMINAL: Final = frozenset({"expired", "shed", "invalid", "duplicate"})
"""Statuses that skip every later stage and go straight to the responses."""

MAX_CANDIDATES: Final = 10_000
MAX_K: Final = 1_000
MAX_EPOCH_MS: Final = 2.0**53
"""The last millisecond a float64 holds exactly: past it ``deadline_ms``/``created_at_ms`` is
garbage whatever the clock says. Ingest's ``max_timeout_ms`` is the operator's tighter limit."""

ContextValue = str | int | float | bool
CandidateId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """A recommendation request as a client publishes it (JSON).

    At most one of ``deadline_ms`` (absolute, Unix epoch milliseconds) and ``timeout_ms``
    (relative to arrival at ingest) may be given; with neither, ingest applies its default
    timeout. A higher ``priority`` is shed later. ``created_at_ms`` (the client's publish time)
    makes the reported latency include the time spent queued in Kafka before ingest.
    """

    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    user_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    candidates: Annotated[list[CandidateId], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 10
    deadline_ms: Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)] | None = None
    timeout_ms: Annotated[float, msgspec.Meta(gt=0, le=MAX_EPOCH_MS)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    created_at_ms: Annotated[float, msgspec.Meta(ge=0, le=MAX_EPOCH_MS)] | None = None
    exclude: list[CandidateId] = []
    context: dict[str, ContextValue] = {}
    v: int = SCHEMA_VERSION


class Event(msgspec.Struct, frozen=True, array_like=True):
    """One request's state as it moves through the stages.

    Fields fill in as stages run: ``features`` sets ``user_vec``, ``embed`` sets ``item_vecs`` and
    ``missing``, ``score`` sets ``scores``, ``rank`` sets ``items`` and ``top_scores``. ``stamps``
    maps a stage name to the epoch-ms time it finished, for the latency breakdown. ``degraded``
    counts lookups answered with a fallback because the store's backend was unavailable.
    """

    v: int
    request_id: str
    user_id: int
    deadline_ms: float
    created_at_ms: float
    k: int
    priority: int
    candidates: npt.NDArray[np.int64]
    exclude: npt.NDArray[np.int64]
    context: dict[str, ContextValue]
    status: Status = "ok"
    reason: str = ""
    stamps: dict[str, float] = {}
    user_vec: npt.NDArray[np.float32] | None = None
    item_vecs: npt.NDArray[np.float32] | None = None
    missing: int = 0
    scores: npt.NDArray[np.float32] | None = None
    items: npt.NDArray[np.int64] | None = None
    top_scores: npt.NDArray[np.float32] | None = None
    degraded: int = 0


class Response(msgspec.Struct, frozen=True, omit_defaults=False):
    """The answer a client reads from the responses topic (JSON).

    ``user_id`` is null only on an ``invalid`` answer to a request whose ``user_id`` could not be
    read: a made-up id such as -1 would break the "int >= 0" every reader relies on.
    """

    request_id: str
    user_id: int | None
    status: Status
    items: list[int]
    scores: list[float]
    latency_ms: float
    created_at_ms: float
    answered_at_ms: float
    stage_ms: dict[str, float]
    missing_embeddings: int = 0
    degraded: bool = False
    reason: str = ""
    v: int = SCHEMA_VERSION


class DeadLetter(msgspec.Struct, frozen=True):
    """An input a stage could not use, kept with the reason so nothing is lost silently.

    ``request_id`` is filled when it could be recovered, so the client can still be answered.
    """

    stage: str
    reason: str
    payload: bytes
    request_id: str = ""
    user_id: int | None = None
