"""The control topic's wire format and the partition hand-over rule, with no Kafka in sight.

The allocator writes and every worker reads one compacted topic, ``jizhi.<pipeline>.control``
(one partition, so one total order). Three kinds of record, JSON (readable with kcat), each
tagged with ``kind`` and versioned with ``v`` (a reader skips a version it does not know):

- key ``admission``: `AdmissionLimit` — ingest's admission rate (requests/s, 0 = unlimited);
- key ``assignment/<stage>``: `AssignmentPlan` — which worker (by ``--instance``) owns which
  partitions of the stage's input topic, at a generation that only ever grows;
- key ``claim/<stage>/<instance>``: `Claim` — published by a worker: "I have released every
  partition outside ``owns``, and until my next claim I process at most ``owns``". A worker that
  stops cleanly deletes its claim (a tombstone) after its last commit.

The hand-over rule (`handover`): a worker takes a partition of its share only when no other
worker's latest claim names it and the consumer group has no group-managed member left. Claims
are published *before* taking and checked only once the worker has read the log past its own
claim, so of two workers claiming one partition, the later one always sees the earlier one.
See docs/allocator.md, "Assignment".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

VERSION = 1
ADMISSION_KEY = "admission"


class AdmissionLimit(msgspec.Struct, frozen=True, tag="admission", tag_field="kind"):
    rate: float
    v: int = VERSION


class AssignmentPlan(msgspec.Struct, frozen=True, tag="assignment", tag_field="kind"):
    stage: str
    generation: int
    owners: dict[str, list[int]]
    """Instance -> partitions of the stage's input topic."""
    v: int = VERSION

    def share(self, instance: str) -> frozenset[int]:
        return frozenset(self.owners.get(instance, ()))


class Claim(msgspec.Struct, frozen=True, tag="claim", tag_field="kind"):
    stage: str
    instance: str
    generation: int
    owns: list[int]
    v: int = VERSION


ControlRecord = AdmissionLimit | AssignmentPlan | Claim

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ControlRecord)


def plan_key(stage: str) -> str:
    return f"assignment/{stage}"


def claim_key(stage: str, instance: str) -> str:
    return f"claim/{stage}/{instance}"


def encode(record: ControlRecord, /) -> tuple[bytes, bytes]:
    """(key, value) of a record."""
    if isinstance(record, AdmissionLimit):
        key = ADMISSION_KEY
    elif isinstance(record, AssignmentPlan):
        key = plan_key(record.stage)
    else:
        key = claim_key(record.stage, record.instance)
    return key.encode(), _encoder.encode(record)


def decode(value: bytes, /) -> ControlRecord | None:
    """A record, or None for one this reader cannot use (malformed, unknown kind or version)."""
    try:
        record = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return record if record.v <= VERSION else None


class ControlState:
    """The latest record of every key, as a reader of the control topic has seen them.

    Not thread-safe on its own: the follower serialises ``apply`` and the snapshots."""

    def __init__(self) -> None:
        self.admission: float | None = None
        self.plans: dict[str, AssignmentPlan] = {}
        self.claims: dict[str, dict[str, Claim]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> ControlRecord | None:
        """Take one record (``value`` None: a tombstone); returns what changed, if anything."""
        name = (key or b"").decode(errors="replace")
        if value is None:
            if name == ADMISSION_KEY:
                self.admission = None
            elif name.startswith("assignment/"):
                self.plans.pop(name.removeprefix("assignment/"), None)
            elif name.startswith("claim/"):
                stage, _, instance = name.removeprefix("claim/").partition("/")
                self.claims.get(stage, {}).pop(instance, None)
            return None
        record = decode(value)
        if isinstance(record, AdmissionLimit):
            self.admission = record.rate
        elif isinstance(record, AssignmentPlan):
            old = self.plans.get(record.stage)
            if old is not None and old.generation > record.generation:
                return None  # an allocator restarted from an older generation must not win
            self.plans[record.stage] = record
        elif isinstance(record, Claim):
            self.claims.setdefault(record.stage, {})[record.instance] = record
        return record


@dataclass(frozen=True, slots=True)
class Step:
    """What a worker following ``generation`` does next with one stage's partitions."""

    generation: int
    release: frozenset[int]
    """Held but no longer mine: stop, finish in-flight, commit, unassign, then claim."""
    take: frozenset[int]
    """Mine, not held, and free: assign from the committed offset."""
    waiting: frozenset[int]
    """Mine, not held, but still claimed by another worker (or the group is not empty)."""


def handover(
    me: str,
    plan: AssignmentPlan,
    held: Iterable[int],
    claims: Mapping[str, Claim],
    *,
    my_claim: Claim | None,
    group_empty: bool,
) -> Step:
    """The pure rule. ``my_claim`` is this worker's latest claim *as read back from the log*
    (so everything published before it is visible too); nothing is taken before it covers
    ``plan.generation``."""
    mine = plan.share(me)
    have = frozenset(held)
    release = have - mine
    wanted = mine - have
    if release or my_claim is None or my_claim.generation < plan.generation or not group_empty:
        return Step(plan.generation, release, frozenset(), wanted)
    busy = {p for who, c in claims.items() if who != me for p in c.owns}
    return Step(plan.generation, release, wanted - busy, wanted & busy)
