"""Kill a writer of the embedded store mid-put, then prove every vector is old or new, never torn.

A child process rewrites every row of a table with one value per put (each row is ``v``
repeated, so a torn row shows two values) and appends a few rows stamped with the same ``v``. The
parent SIGKILLs it at a random moment, as often as it takes to land kills inside a put (seen as
an undo journal left behind), and checks after each kill that:

- no row is torn (each row holds a single value),
- the whole put is atomic: every updated row and the appended rows agree on one committed ``v``,
- that ``v`` is the last put the child saw return, or the one in flight,
- a read-only opener (a worker) sees the same thing before any writer has recovered the table.

No broker needed, so it runs in the unit pass; it starts (and kills) processes, hence the
``processes`` marker.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from storage import EmbeddedStore, TableSpec
from storage._journal import JOURNAL

pytestmark = pytest.mark.processes

ROWS = 20_000
DIM = 64
EXTRA = 16  # rows appended per put
WRITER = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    from storage import EmbeddedStore
    store = EmbeddedStore(sys.argv[1], durable=False)
    base = np.arange({ROWS}, dtype=np.int64)
    v = int(sys.argv[2])
    while True:
        v += 1
        extra = np.arange({ROWS} + v * {EXTRA}, {ROWS} + (v + 1) * {EXTRA}, dtype=np.int64)
        ids = np.concatenate((base, extra))
        store.put_many("t", ids, np.full((ids.shape[0], {DIM}), v, dtype=np.float32))
        print(v, flush=True)
    """
)


def _committed_value(store: EmbeddedStore) -> int:
    got = store.get_many("t", np.arange(ROWS, dtype=np.int64))
    assert got.found.all()
    vec = got.vectors
    torn = np.flatnonzero((vec != vec[:, :1]).any(axis=1))
    assert torn.size == 0, f"rows {torn[:5]} are torn"
    values = np.unique(vec[:, 0])
    assert values.shape[0] == 1, f"a put was half applied: rows hold {values[:5]}"
    v = int(values[0])
    # appended rows exist exactly for the committed puts, each stamped with its own v
    extra = np.arange(ROWS + 1 * EXTRA, ROWS + (v + 2) * EXTRA, dtype=np.int64)
    looked = store.get_many("t", extra)
    stamp = (extra - ROWS) // EXTRA
    np.testing.assert_array_equal(looked.found, stamp <= v)
    np.testing.assert_array_equal(looked.vectors[stamp <= v, 0], stamp[stamp <= v])
    return v


def test_a_killed_writer_leaves_every_put_whole(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with EmbeddedStore(root, durable=False) as store:
        store.create_table(TableSpec("t", DIM))
        store.put_many(
            "t", np.arange(ROWS, dtype=np.int64), np.zeros((ROWS, DIM), dtype=np.float32)
        )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    rng = random.Random(1)
    committed, kills, mid_put = 0, 0, 0
    deadline = time.monotonic() + 60
    while (mid_put < 3 or kills < 5) and time.monotonic() < deadline:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(committed)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        seen = committed
        for _ in range(rng.randint(2, 6)):  # let it finish a few puts, then strike anywhere
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            seen = int(line)
        time.sleep(rng.uniform(0, 0.02))
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:  # puts that returned before the kill landed
            seen = int(line)
        child.stdout.close()
        kills += 1
        mid_put += (root / "t" / JOURNAL).exists()
        with EmbeddedStore(root, mode="r") as reader:  # a worker, before any recovery
            seen_by_reader = _committed_value(reader)
        with EmbeddedStore(root, durable=False) as writer:  # recovers: undoes, drops the journal
            committed = _committed_value(writer)
        assert not (root / "t" / JOURNAL).exists()
        assert seen_by_reader == committed
        assert committed in (seen, seen + 1), (committed, seen)
    assert mid_put >= 1, f"no kill out of {kills} landed inside a put; the test proved nothing"
