"""Bad input over the wire: generated garbage published to the real broker, between valid
requests, in the same micro-batches.

Every bad request must be dead-lettered with a reason (and the ``jizhi.request_id`` header when
its id is readable) and answered ``invalid`` when its id is readable; a repeated id is answered
``duplicate``; an absurd deadline is refused or answered ``expired``; the valid neighbours are
all answered ``ok``. Hypothesis draws the mixes; a fixed number of derandomized examples keeps the
run bounded and the same on every CI run.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jizhi.client import Client
from stages.events import DeadLetter, Response
from tests.integration.workerkit import WORLD, WorkerProc, Workers, unique_pipeline

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 65_536
MAX_CANDIDATES = 2_000
MAX_TIMEOUT_MS = 600_000.0
STAGES = (
    '[{use = "ingest", params = '
    f"{{max_payload_bytes = {MAX_PAYLOAD}, max_candidates = {MAX_CANDIDATES}, "
    f"max_timeout_ms = {MAX_TIMEOUT_MS}}}}}, "
    '"features", "embed", "score", "rank"]'
)
_ids = itertools.count()

Expect = Literal["ok", "invalid", "dead", "duplicate", "late"]
"""ok: answered ok; invalid: dead-lettered and answered invalid; dead: dead-lettered (answered
invalid only if its id happens to be readable); duplicate: answered duplicate; late: answered
expired or shed (a deadline already gone or too short)."""


@dataclass(frozen=True)
class Case:
    kind: str
    payload: bytes
    rid: str
    expect: Expect


class _Seen:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.dead: list[DeadLetter] = []

    def on_responses(self, batch: list[Response]) -> None:
        self.responses.extend(batch)

    def on_dead(self, batch: list[DeadLetter]) -> None:
        self.dead.extend(batch)


@pytest.fixture(scope="module")
def wire(
    kafka_bootstrap: str, world_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Workers, Client, _Seen]]:
    """One worker (all five stages, small limits) and one client tailing answers and letters."""
    w = Workers(
        kafka_bootstrap,
        unique_pipeline("bad"),
        world_dir,
        tmp_path_factory.mktemp("bad"),
        stages=STAGES,
    )
    proc: WorkerProc = w.start("ingest,features,embed,score,rank")
    proc.wait_assigned()
    seen = _Seen()
    client = Client(
        kafka_bootstrap, w.pipeline, on_responses=seen.on_responses, on_dead=seen.on_dead
    )
    try:
        yield w, client, seen
    finally:
        client.close()
        try:
            assert proc.terminate() == 0, w.logs()
        finally:
            w.close()


def _rid(kind: str) -> str:
    return f"{kind}-{next(_ids)}-{uuid.uuid4().hex[:6]}"


def _valid(rid: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": rid,
        "user_id": 1 + next(_ids) % (WORLD.users - 1),
        "candidates": [1, 2, 3, 4, 5, 6],
        "k": 3,
        "timeout_ms": 30_000,
    }
    body.update(extra)
    return body


def _enc(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


REQUIRED = ("user_id", "candidates")
WRONG = st.sampled_from(["abc", [1, "x"], {"a": 1}, True, 1.5, [[1]]])
ABSURD = [
    (lambda: {"deadline_ms": 0}, "late"),
    (lambda: {"deadline_ms": time.time() * 1000 - 60_000}, "late"),
    (lambda: {"timeout_ms": 1e-6}, "late"),
    (lambda: {"timeout_ms": MAX_TIMEOUT_MS * 10}, "invalid"),
    (lambda: {"deadline_ms": time.time() * 1000 + MAX_TIMEOUT_MS * 10}, "invalid"),
    (lambda: {"deadline_ms": 1e300}, "invalid"),
    (lambda: {"timeout_ms": -5}, "invalid"),
    (lambda: {"timeout_ms": 0}, "invalid"),
    (lambda: {"timeout_ms": 100, "deadline_ms": time.time() * 1000 + 100}, "invalid"),
]


@st.composite
def bad_case(draw: st.DrawFn) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "wrong_type",
                "missing",
                "unknown",
                "huge_list",
                "out_of_range",
                "non_finite",
                "utf8",
                "oversized",
                "absurd_deadline",
                "not_json",
            ]
        )
    )
    rid = _rid(kind)
    if kind == "wrong_type":
        field = draw(st.sampled_from([*REQUIRED, "k", "priority", "exclude", "context"]))
        value = draw(WRONG.filter(lambda v: not (field == "context" and isinstance(v, dict))))
        return Case(kind, _enc(_valid(rid, **{field: value})), rid, "invalid")
    if kind == "missing":
        field = draw(st.sampled_from([*REQUIRED, "request_id"]))
        body = _valid(rid, marker=rid)
        del body[field]
        return Case(kind, _enc(body), rid, "dead" if field == "request_id" else "invalid")
    if kind == "unknown":
        key = "x_" + draw(st.text(st.characters(codec="utf-8"), max_size=8))
        value = draw(st.none() | st.integers() | st.text(max_size=20) | st.lists(st.booleans()))
        return Case(kind, _enc(_valid(rid, **{key: value})), rid, "ok")
    if kind == "huge_list":
        field, n = draw(
            st.sampled_from(
                [
                    ("candidates", MAX_CANDIDATES + 1),
                    ("candidates", 50_000),
                    ("exclude", 20_000),
                    ("context", 500),
                ]
            )
        )
        value: Any = {f"k{i}": i for i in range(n)} if field == "context" else list(range(n))
        return Case(kind, _enc(_valid(rid, **{field: value})), rid, "invalid")
    if kind == "out_of_range":
        field, value = draw(
            st.sampled_from(
                [
                    ("user_id", -1),
                    ("user_id", 2**63),
                    ("candidates", [1, -7]),
                    ("candidates", [2**64]),
                    ("candidates", []),
                    ("k", 0),
                    ("k", 10**6),
                    ("priority", 10),
                    ("exclude", [-1]),
                    ("request_id", ""),
                    ("request_id", "r" * 129),
                ]
            )
        )
        expect: Expect = "dead" if field == "request_id" else "invalid"
        body = _valid(rid, marker=rid, **{field: value})
        return Case(kind, _enc(body), rid, expect)
    if kind == "non_finite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]))
        where = draw(st.sampled_from(["timeout_ms", "context", "candidates", "user_id"]))
        body = _valid(rid)
        text = json.dumps(body)
        if where == "context":
            text = text[:-1] + f', "context": {{"f": {token}}}}}'
        elif where == "candidates":
            text = text.replace('"candidates": [1,', f'"candidates": [{token},')
        else:
            text = text.replace(f'"{where}": {json.dumps(body[where])}', f'"{where}": {token}')
        # JSON has no NaN/Infinity: the whole document is malformed, its id may not be read.
        malformed = token in ("NaN", "Infinity", "-Infinity")
        return Case(kind, text.encode(), rid, "dead" if malformed else "invalid")
    if kind == "utf8":
        raw = _enc(_valid(rid, context={"s": "@@"}))
        return Case(kind, raw.replace(b"@@", b"\xff\xfe"), rid, "dead")
    if kind == "oversized":
        size = draw(st.sampled_from([MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD, 1 << 20]))
        body = _valid(rid)
        body["pad"] = "x" * size
        return Case(kind, _enc(body), rid, "invalid")
    if kind == "absurd_deadline":
        make, expect_d = draw(st.sampled_from(ABSURD))
        body = _valid(rid)
        del body["timeout_ms"]
        body.update(make())
        return Case(kind, _enc(body), rid, expect_d)  # type: ignore[arg-type]
    junk = draw(st.binary(min_size=1, max_size=200))
    return Case(kind, b"\x00" + junk + rid.encode(), rid, "dead")


@st.composite
def mix(draw: st.DrawFn) -> list[Case]:
    """Bad cases with valid neighbours between them, and some valid ids sent twice."""
    cases: list[Case] = []
    for bad in draw(st.lists(bad_case(), min_size=12, max_size=32)):
        rid = _rid("ok")
        cases.append(Case("valid", _enc(_valid(rid)), rid, "ok"))
        cases.append(bad)
        if draw(st.integers(0, 4)) == 0:
            cases.append(Case("repeat", _enc(_valid(rid)), rid, "duplicate"))
    return cases


def _problems(seen: _Seen, cases: list[Case]) -> list[str]:
    """What is not (yet) as it should be; empty once every case is settled as expected."""
    by_id: dict[str, list[str]] = {}
    for r in list(seen.responses):
        by_id.setdefault(r.request_id, []).append(r.status)
    dead = list(seen.dead)
    problems: list[str] = []
    for c in cases:
        got = by_id.get(c.rid, [])
        if (
            c.expect == "ok"
            and c.kind == "valid"
            and sorted(got) not in (["ok"], ["duplicate", "ok"])
        ):
            problems.append(f"valid neighbour {c.rid}: {got}")
        elif c.expect == "ok" and c.kind != "valid" and got != ["ok"]:
            problems.append(f"{c.kind} {c.rid} (should be served): {got}")
        elif c.expect == "duplicate" and sorted(got) != ["duplicate", "ok"]:
            problems.append(f"repeat of {c.rid}: {got}")
        elif c.expect == "late" and not set(got) & {"expired", "shed"}:
            problems.append(f"{c.kind} {c.rid} (should be late): {got}")
        elif c.expect == "invalid" and got != ["invalid"]:
            problems.append(f"{c.kind} {c.rid} (should be invalid): {got}")
        elif c.expect == "dead" and set(got) - {"invalid"}:
            problems.append(f"{c.kind} {c.rid} (should be refused): {got}")
        if c.expect in ("invalid", "dead"):
            letters = [d for d in dead if d.payload and c.payload.startswith(d.payload)]
            if not letters or not all(d.reason and d.stage == "ingest" for d in letters):
                problems.append(f"{c.kind} {c.rid}: no dead letter with a reason")
            elif c.expect == "invalid" and letters[0].request_id != c.rid:
                problems.append(f"{c.kind} {c.rid}: header request_id {letters[0].request_id!r}")
    return problems


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each try may wait 20 s for answers
    suppress_health_check=list(HealthCheck),
)
@given(cases=mix())
def test_bad_input_is_refused_and_its_neighbours_served(
    wire: tuple[Workers, Client, _Seen], cases: list[Case]
) -> None:
    w, client, seen = wire
    seen.responses.clear()
    seen.dead.clear()
    for c in cases:
        client.publish(c.payload, key=c.rid.encode())
    assert client.flush(30.0) == 0
    end = time.monotonic() + 20.0
    while (problems := _problems(seen, cases)) and time.monotonic() < end:
        time.sleep(0.2)
    assert not problems, "\n".join(problems) + "\n" + w.logs()[-2000:]
    time.sleep(0.3)  # anything answered twice shows now
    assert not _problems(seen, cases)
    for r in seen.responses:
        assert r.user_id is None or r.user_id >= 0, r
