"""What every peer shares: the argument parser, the events and the transform."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import msgspec
import numpy as np

from stages.codec import EventCodec
from stages.events import Event

SCALE = np.float32(1.5)
STAMP = "scale"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--exactly-once", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64, help="jizhi's micro-batch (64)")
    ap.add_argument(
        "--depth-every-batch",
        action="store_true",
        help="jizhi as before the fix: sample the source's depth on every batch",
    )
    return ap.parse_args(argv)


def scale(ev: Event, now_ms: float) -> Event:
    """The transform: scores x 1.5 and a stamp, as a jizhi stage's runner would add."""
    assert ev.scores is not None
    return msgspec.structs.replace(
        ev, scores=ev.scores * SCALE, stamps={**ev.stamps, STAMP: now_ms}
    )


class BytesTransform:
    """bytes -> bytes with codecs built once (for peers whose API is one message at a time)."""

    def __init__(self) -> None:
        self._codec = EventCodec()

    def __call__(self, raw: bytes) -> bytes:
        return self._codec.encode(scale(self._codec.decode(raw), time.time() * 1000.0))


def make_events(n: int, *, candidates: int = 200, seed: int = 7) -> list[Event]:
    """``n`` real events as ``score`` sees them: candidates, exclusions, context, scores."""
    rng = np.random.default_rng(seed)
    now = time.time() * 1000.0
    out = []
    for i in range(n):
        out.append(
            Event(
                v=1,
                request_id=f"bench-{i:08d}",
                user_id=int(rng.integers(0, 100_000)),
                deadline_ms=now + 30 * 86_400_000.0,  # the topic is reused across runs
                created_at_ms=now,
                k=10,
                priority=0,
                candidates=rng.integers(0, 1_000_000, candidates, dtype=np.int64),
                exclude=np.zeros(0, dtype=np.int64),
                context={"device": "ios", "hour": 12},
                stamps={"ingest": now, "features": now},
                scores=rng.random(candidates, dtype=np.float32),
            )
        )
    return out
