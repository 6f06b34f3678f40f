"""LocalCache: the in-process first tier, sized in bytes and made for power-law access.

Why this shape:

- **Set-associative arrays, not a dict.** Keys live in ``keys[sets, ways]`` and rows in one
  ``rows[sets * ways, dim]`` array; a hash of the id picks the set. A batch lookup is then a handful
  of whole-array numpy operations (hash, gather the sets, compare, gather rows) with no Python loop
  per id, which a dict or an OrderedDict LRU cannot offer.
- **Frequency, not recency.** Recommendation traffic is Zipf-like: a few ids are hot for a long
  time and most ids are seen once. Replacement keeps the ways whose estimated frequency is
  highest, and TinyLFU admission lets a missed id in only if it has been asked for more often than
  the row it would evict, so a stream of one-hit wonders cannot flush the popular rows.
- **Frequency from one count-min sketch** (4 rows of saturating uint8 counters, conservative
  update) fed with every id looked up, hit or miss, duplicates counted. An id's four counters sit
  in one 64-byte block, so updating the sketch costs one cache miss per id, not four. Counters are
  halved every ``16 x capacity`` accesses, so popularity ages and yesterday's hits make way for
  today's. The sketch gets 8-16 counters per cached row: with fewer, the ~16 x capacity distinct
  ids of a window collide so much that admission turns random (measured: 1 counter per row lost
  up to 15 points of hit ratio on small caches).
- **Budget in bytes.** A table's share of the budget pays for its rows, keys, sketch and (with a
  TTL) timestamps; ``capacity = share // bytes_per_entry``, rounded down to whole sets, so the
  arrays never exceed the budget however wide the rows are. (For 32 float32 values an entry is
  128 + 8 + 16 = 152 bytes.)
- **Several tables, one budget.** Each table gets its own segment. Shares follow ``weights``
  (default 1 per table); declared tables are reserved up front, and when an undeclared table shows
  up the existing segments shrink, keeping their most frequent rows.

A row returned by ``get`` is always a copy, so callers may keep or modify it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from storage._arrays import as_ids, as_vectors, last_wins, zeros
from storage.errors import SchemaMismatchError
from storage.metrics import TierMetrics
from storage.store import Ids, Lookup, TableSpec, Vectors

U64 = npt.NDArray[np.uint64]
IntArr = npt.NDArray[np.int64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BYTES_LO = np.uint64(0x0101010101010101)
_BYTES_HI = np.uint64(0x8080808080808080)
_ZERO = np.uint64(0)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SATURATED = 255
_RESET_FACTOR = 16  # halve the sketch every 16 x capacity accesses
_DEPTH = 4  # count-min rows
_ROW = 16  # counters of one row within a block
_BLOCK = _DEPTH * _ROW  # bytes of one sketch block: one cache line
_SKETCH_PER_ENTRY = 16  # counters reserved per cached row (4 per count-min row)


def _decoder(ways: int) -> tuple[Any, Any, Any]:
    """A word type, multiplier and shift that turn a one-hot row of ``ways`` bytes into way+1.

    Little-endian, way k is byte k, i.e. the value ``1 << 8k``; multiplying by a constant whose
    byte j holds ``ways - j`` puts ``k + 1`` in the top byte (and 0 stays 0).
    """
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[ways]
    magic = sum((ways - j) << (8 * j) for j in range(ways))
    return dtype, dtype(magic), dtype(8 * (ways - 1))


_WAY_MAGIC8 = np.uint64(0x0102030405060708)  # _decoder(8)'s multiplier, for the hit path
_WAY_WORD: dict[int, tuple[Any, Any, Any]] = (
    {w: _decoder(w) for w in (1, 2, 4, 8)} if np.little_endian else {}
)


def _mix(ids: Ids) -> U64:
    """splitmix64 finalizer: a bijection, so distinct ids never share a hash."""
    z = ids.astype(np.uint64)  # wraps -1 (the empty marker) to 2**64-1, harmless
    z += _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _home(ids: Ids, sets: int) -> tuple[U64, npt.NDArray[np.intp]]:
    """Fibonacci hash of each id and the set it lives in.

    One multiply by an odd constant spreads ids over the product's high bits, which pick the set
    (by ``_fastrange``) and, below them, the 8-bit tag. It is weaker than ``_mix`` but needs two
    array operations instead of seven, and the hit path runs it on every id; the sketch, which
    needs independent hashes, runs the stronger ``_mix`` only on the ids it samples.
    """
    h = _fib(ids)
    return h, _fastrange(h >> np.uint64(32), sets)


def _fib(ids: Ids) -> U64:
    h: U64 = ids.view(np.uint64) * _GOLDEN
    return h


def _tags(h: U64) -> U64:
    """The 8-bit tag of each hash, bits 24-31: the bits just below those that chose the set."""
    out: U64 = (h >> np.uint64(24)) & np.uint64(0xFF)
    return out


def _fastrange(h32: U64, n: int) -> npt.NDArray[np.intp]:
    """Map 32-bit hashes onto [0, n) by multiply-shift (Lemire): no modulo, any n < 2**32.

    The result is below 2**32, so reinterpreting the uint64 as int64 is exact and saves a copy.
    """
    out = h32 * np.uint64(n)
    out >>= np.uint64(32)
    return out.view(np.intp)


class CacheStats(NamedTuple):
    """Counters of one table's segment (hits and misses since the cache was made)."""

    hits: int
    misses: int
    entries: int
    capacity: int
    bytes_used: int
    bytes_allocated: int


class _Absent(NamedTuple):
    """What ``_Segment.update`` did not find: distinct ids with their set and row."""

    refreshed: int
    ids: Ids
    sets: npt.NDArray[np.intp]
    rows: Vectors


class _Segment:
    """One table's slice of the cache; every method expects the caller to hold the lock."""

    def __init__(
        self,
        spec: TableSpec,
        budget: int,
        *,
        ways: int,
        ttl: float | None,
        sketch_sample: int = 1 << 30,
    ) -> None:
        self.spec = spec
        self.ways = ways
        self.ttl = ttl
        self.row_bytes = spec.dim * np.dtype(spec.dtype).itemsize
        # row + key (8) + timestamp when a TTL applies (8); the sketch is reserved apart
        self.entry_bytes = self.row_bytes + 8 + (8 if ttl is not None else 0)
        # ids sampled by all-hit lookups wait here and reach the sketch in one batch (``count``);
        # the buffer is paid from the budget, so small caches go without
        pending = 4 * sketch_sample if budget >= 64 * 8 * 4 * sketch_sample else 0
        self.pending = np.empty(pending, dtype=np.int64)
        self.npending = 0
        spare = max(budget - _BLOCK - pending * 8, 0)  # one block is the least a sketch can be
        self.sets = spare // (self.entry_bytes + _SKETCH_PER_ENTRY) // ways
        self.capacity = self.sets * ways
        self.keys = np.full((self.sets, ways), -1, dtype=np.int64)
        # one 8-bit tag per way, a set's tags in one 64-bit word (8 ways): see ``_probe``
        self.tags = np.zeros((self.sets, ways), dtype=np.uint8)
        fast = ways == 8 and np.little_endian
        self.tag_words = self.tags.view(np.uint64).reshape(-1) if fast else None
        self.rows = np.zeros((self.capacity, spec.dim), dtype=spec.dtype)
        self.stamps = np.zeros(self.capacity, dtype=np.float64) if ttl is not None else None
        # a power of two of blocks within the reserved bytes: 8 to 16 counters per entry
        wanted = self.capacity * _SKETCH_PER_ENTRY // _BLOCK
        self.blocks = 1 << max(wanted.bit_length() - 1, 0) if self.capacity else 0
        self.sketch = np.zeros(self.blocks * _BLOCK, dtype=np.uint8)
        self.sample = _RESET_FACTOR * self.capacity
        self.adds = 0
        self.entries = 0
        self.hits = 0
        self.misses = 0
        self.sketch_sample = sketch_sample
        self.phase = 0
        self.metrics = TierMetrics(spec.name, "cache")

    @property
    def bytes_allocated(self) -> int:
        parts: list[npt.NDArray[Any]] = [self.keys, self.tags, self.rows, self.sketch]
        parts.append(self.pending)
        if self.stamps is not None:
            parts.append(self.stamps)
        return sum(int(p.nbytes) for p in parts)

    @property
    def bytes_used(self) -> int:
        return self.entries * self.entry_bytes

    # -- hashing -------------------------------------------------------------------------------

    def _find(self, ids: Ids) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
        """Set and way+1 (0 = absent) of each id, exactly: one gather of whole sets of keys."""
        _, sets = _home(ids, self.sets)
        return sets, self._find_in(ids, sets)

    def _find_in(self, ids: Ids, sets: npt.NDArray[np.intp]) -> npt.NDArray[np.uint8]:
        candidates = np.take(self.keys, sets, axis=0)
        return self._way_of(candidates == ids[:, None])

    def _probe(self, ids: Ids) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Slot of each id and whether it is cached: the hit path.

        With 8 ways a set's tags are one uint64, so a lookup gathers 8 bytes per id instead of
        a 64-byte row of keys, and finds the way whose tag matches with SWAR arithmetic (the
        classic "has a zero byte" test on ``tags ^ tag * 0x0101..01``), all on (n,) arrays.
        The lowest matching way is then checked against the full key. A tag can match a
        wrong way first (about 1 id in 40 with full sets); those few ids take the exact path,
        so the answer is always exact.
        """
        h, sets = _home(ids, self.sets)
        words = self.tag_words
        if words is None:
            way = self._find_in(ids, sets)
            return sets * self.ways + way.astype(np.intp) - 1, way != 0
        x = np.take(words, sets)
        # byte 3 of each little-endian hash is its tag (see ``_tags``): a strided view, no copy
        x ^= np.multiply(h.view(np.uint8)[3::8], _BYTES_LO, dtype=np.uint64)
        m = x - _BYTES_LO
        np.invert(x, out=x)
        m &= x
        m &= _BYTES_HI  # 0x80 in every byte of x that is zero (and maybe false ones above)
        x = np.negative(m, out=x)
        m &= x  # keep the lowest: exact, a borrow only ever spoils higher bytes
        m >>= np.uint64(7)  # 1 << 8k for way k, or 0
        m *= _WAY_MAGIC8
        m >>= np.uint64(56)  # k + 1, or 0
        slot = sets * self.ways  # a new array, updated in place below
        slot += m.view(np.intp)
        slot -= 1  # no match: some slot of another set, whose key never equals the id
        found = np.take(self.keys.reshape(-1), slot) == ids
        # a tag that matched, yet the wrong key: the id may sit in a higher way
        doubt = np.flatnonzero(m[~found]) if ids.shape[0] - np.count_nonzero(found) else None
        if doubt is not None and doubt.size:
            doubt = np.flatnonzero(~found)[doubt]
            way = self._find_in(ids[doubt], sets[doubt])
            slot[doubt] = sets[doubt] * self.ways + way.astype(np.intp) - 1
            found[doubt] = way != 0
        return slot, found

    def _write_keys(self, slots: npt.NDArray[np.intp], ids: Ids) -> None:
        """Set the key and tag of ``slots``; every key write goes through here."""
        self.keys.reshape(-1)[slots] = ids
        self.tags.reshape(-1)[slots] = _tags(_fib(ids)).astype(np.uint8)

    def _way_of(self, eq: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
        """Way+1 of the one True per row of ``eq`` (n, ways), 0 where the row has none.

        Keys are unique within a set, so a row holds at most one True. For 1, 2, 4 or 8 ways a
        row is one machine word, and one multiply moves the byte index of its set byte into the
        top byte (see ``_WAY_DECODE``): four whole-array operations where a uint8 matmul or an
        argmax over rows measured 5-10x slower.
        """
        word = _WAY_WORD.get(self.ways)
        if word is None:
            hit = eq.any(axis=1)
            way: npt.NDArray[np.uint8] = (eq.argmax(axis=1) + 1).astype(np.uint8)
            way[~hit] = 0
            return way
        dtype, magic, shift = word
        v = eq.view(dtype).reshape(-1)
        v *= magic
        v >>= shift
        out: npt.NDArray[np.uint8] = v.astype(np.uint8)
        return out

    def _sketch_index(self, z: U64) -> npt.NDArray[np.intp]:
        """Flat counter positions, shape (4, n), all four of an id in one 64-byte block.

        The gather from the sketch is bound by memory, not arithmetic: keeping an id's counters
        in one cache line costs one miss instead of four. Row r of the sketch is the r-th
        16 counters of the block, so the rows still collide independently within a block.
        """
        base = (z.astype(np.uint32) & np.uint32(self.blocks - 1)).astype(np.intp)
        base *= _BLOCK
        spread = ((z * _MIX1) >> np.uint64(32)).astype(np.uint32)
        out = np.empty((_DEPTH, z.shape[0]), dtype=np.intp)
        for r in range(_DEPTH):
            np.bitwise_and(spread, np.uint32(_ROW - 1), out=out[r], casting="unsafe")
            out[r] += base
            out[r] += r * _ROW
            spread >>= np.uint32(4)
        return out

    def estimate(self, z: U64) -> IntArr:
        if z.size == 0:
            return np.zeros(0, dtype=np.int64)
        est: IntArr = np.take(self.sketch, self._sketch_index(z)).min(axis=0).astype(np.int64)
        return est

    def _add(self, z: U64, counts: IntArr) -> None:
        """Conservative count-min update: raise only the counters below the new estimate.

        Only the raised counters are written back, which is most of the cost saved: hot ids sit
        at saturation and their counters need no write at all.
        """
        idx = self._sketch_index(z)
        current = np.take(self.sketch, idx)
        target = np.minimum(current.min(axis=0) + counts, _SATURATED).astype(np.uint8)
        raised = current < target
        np.put(self.sketch, idx[raised], np.broadcast_to(target, current.shape)[raised])

    def count(self, ids: Ids, *, now: bool = True) -> None:
        """Record the accesses in ``ids`` (duplicates counted), aging when due.

        A lookup of more than ``sketch_sample`` ids records only a systematic sample of about
        that many (every k-th id from a rotating offset). Admission compares frequencies with
        each other, never with a constant, so a uniform sample ranks ids as the whole stream
        would, at a fraction of the sketch traffic, which was half the hit path's time on big
        batches. Aging counts recorded accesses, so the counters keep their resolution (about
        16 recorded accesses per cached row between halvings) whatever the batch size; big
        batches just age the sketch over more real accesses, which their steadier statistics
        afford. Small batches (the unit tests, most callers' per-request lookups) are counted
        exactly.

        Recording costs some thirty small numpy calls whatever the count, so the samples of
        lookups that hit every id wait in a buffer and are recorded together once it fills;
        ``flush`` (on any miss, before every offer and resize) records them before admission
        reads the sketch, so admission always sees every access made so far.
        """
        n = int(ids.shape[0])
        step = n // self.sketch_sample
        if step > 1:
            self.phase = (self.phase + 1) % step
            ids = ids[self.phase :: step]
        m = int(ids.shape[0])
        if self.npending + m > self.pending.shape[0]:
            self.flush()
        if m > self.pending.shape[0]:
            self._record(ids)
        else:
            self.pending[self.npending : self.npending + m] = ids
            self.npending += m
        if now:
            self.flush()

    def flush(self) -> None:
        """Record the buffered samples now."""
        if self.npending:
            ids, self.npending = self.pending[: self.npending], 0
            self._record(ids)

    def _record(self, ids: Ids) -> None:
        if ids.shape[0]:
            uz, counts = np.unique(_mix(ids), return_counts=True)
            self._add(uz, counts.astype(np.int64))
        self.adds += int(ids.shape[0])
        if self.adds >= self.sample:
            np.right_shift(self.sketch, 1, out=self.sketch)
            self.adds //= 2

    # -- operations ----------------------------------------------------------------------------

    def get(self, ids: Ids, now: float) -> Lookup:
        n = ids.shape[0]
        if self.capacity == 0 or n == 0:
            self.misses += n
            return Lookup(zeros(self.spec, n), np.zeros(n, dtype=np.bool_))
        slot, found = self._probe(ids)  # a miss points at some slot; masked
        if self.stamps is not None and self.ttl is not None:
            found &= self.stamps[slot] >= now - self.ttl
        vectors = np.take(self.rows, slot, axis=0)
        hits = int(np.count_nonzero(found))
        if hits < n:
            vectors[~found] = 0
        self.hits += hits
        self.misses += n - hits
        self.count(ids, now=hits < n)
        return Lookup(vectors, found)

    def _overwrite(self, slots: npt.NDArray[np.intp], vectors: Vectors, now: float) -> None:
        self.rows[slots] = vectors
        if self.stamps is not None:
            self.stamps[slots] = now

    def update(self, ids: Ids, vectors: Vectors, now: float) -> _Absent:
        """Overwrite the rows of ids already cached (last one wins); return the others."""
        uniq, last = last_wins(ids)
        rows = vectors[last]
        sets, way = self._find(uniq)
        present = way != 0
        slots = sets[present] * self.ways + way[present].astype(np.intp) - 1
        self._overwrite(slots, rows[present], now)
        absent = ~present
        return _Absent(int(slots.shape[0]), uniq[absent], sets[absent], rows[absent])

    def place(
        self,
        ids: Ids,
        sets: npt.NDArray[np.intp],
        rows: Vectors,
        *,
        freq: IntArr,
        stamps: npt.NDArray[np.float64] | float,
        now: float,
    ) -> int:
        """Admit absent, distinct ids whose frequency beats the weakest way of their set.

        Candidates of one set are ranked by frequency and paired with that set's ways ranked
        weakest first (empty and expired ways score -1); pairing the r-th strongest candidate
        with the r-th weakest way and admitting while it wins yields the set's top ``ways`` of
        residents and candidates together, all in whole-array operations.
        """
        m = ids.shape[0]
        if m == 0 or self.capacity == 0:
            return 0
        order = np.lexsort((-freq, sets))
        s_sorted = sets[order]
        starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
        rank = np.arange(m) - np.repeat(starts, np.diff(np.r_[starts, m]))
        keep = rank < self.ways
        order, s_sorted, rank = order[keep], s_sorted[keep], rank[keep]
        k = order.shape[0]
        residents = np.take(self.keys, s_sorted, axis=0)
        score = self.estimate(_mix(residents.ravel())).reshape(k, self.ways)
        empty = residents < 0
        score[empty] = -1
        if self.stamps is not None and self.ttl is not None:
            slots_all = s_sorted[:, None] * self.ways + np.arange(self.ways)
            score[self.stamps[slots_all] < now - self.ttl] = -1
        # Most sets get one candidate, whose victim is the argmin; only sets with several
        # candidates need their ways ranked, and row-wise argsort is slow, so only for those.
        victim = np.argmin(score, axis=1)
        crowded = np.flatnonzero(np.r_[rank[1:] > 0, False] | (rank > 0))
        if crowded.size:
            weakest = np.argsort(score[crowded], axis=1, kind="stable")
            victim[crowded] = weakest[np.arange(crowded.size), rank[crowded]]
        r = np.arange(k)
        admit = freq[order] > score[r, victim]
        src = order[admit]
        slots = s_sorted[admit] * self.ways + victim[admit]
        self._write_keys(slots, ids[src])
        self.rows[slots] = rows[src]
        if self.stamps is not None:
            self.stamps[slots] = stamps[src] if isinstance(stamps, np.ndarray) else stamps
        self.entries += int(np.count_nonzero(empty[r, victim][admit]))
        return int(src.shape[0])

    def offer(self, ids: Ids, vectors: Vectors, now: float) -> int:
        if self.capacity == 0:
            return 0
        self.flush()
        a = self.update(ids, vectors, now)
        freq = self.estimate(_mix(a.ids))
        return self.place(a.ids, a.sets, a.rows, freq=freq, stamps=now, now=now)

    def invalidate(self, ids: Ids | None) -> int:
        if ids is None:
            dropped = self.entries
            self.keys.fill(-1)
            self.tags.fill(0)
            self.entries = 0
            return dropped
        if self.capacity == 0 or ids.shape[0] == 0:
            return 0
        uniq = np.unique(ids)
        sets, way = self._find(uniq)
        present = way != 0
        slots = sets[present] * self.ways + way[present].astype(np.intp) - 1
        self.keys.reshape(-1)[slots] = -1
        self.tags.reshape(-1)[slots] = 0
        self.entries -= int(slots.shape[0])
        return int(slots.shape[0])

    def resized(self, budget: int, now: float) -> _Segment:
        """A segment with a new budget holding this one's most frequent live rows."""
        self.flush()
        new = _Segment(
            self.spec, budget, ways=self.ways, ttl=self.ttl, sketch_sample=self.sketch_sample
        )
        new.hits, new.misses, new.metrics = self.hits, self.misses, self.metrics
        live = self.keys.reshape(-1) >= 0
        if self.stamps is not None and self.ttl is not None:
            live &= self.stamps >= now - self.ttl
        ids = self.keys.reshape(-1)[live]
        if new.capacity == 0 or ids.shape[0] == 0:
            return new
        z = _mix(ids)
        freq = self.estimate(z)
        new._add(z, freq)  # carry the residents' popularity, or newcomers would evict them
        stamps = self.stamps[live] if self.stamps is not None else now
        _, sets = _home(ids, new.sets)
        new.place(ids, sets, self.rows[live], freq=freq, stamps=stamps, now=now)
        return new

    def stats(self) -> CacheStats:
        return CacheStats(
            self.hits,
            self.misses,
            self.entries,
            self.capacity,
            self.bytes_used,
            self.bytes_allocated,
        )


class LocalCache:
    """Embedding rows of several tables in one process, bounded by ``capacity_bytes``.

    ``ways``: slots per set (more ways: fewer conflict misses, a slower hit path).
    ``ttl``/``ttls``: seconds after which a cached row counts as a miss (default, per table).
    ``weights``: share of the budget per table (default 1 each).
    ``sketch_sample``: ids per lookup fed to the frequency sketch at most (see ``count``).
    Thread-safe: one lock around each call, which the numpy work dominates.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        ways: int = 8,
        ttl: float | None = None,
        ttls: Mapping[str, float | None] | None = None,
        weights: Mapping[str, float] | None = None,
        sketch_sample: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sketch_sample < 1:
            raise ValueError(f"sketch_sample must be >= 1, got {sketch_sample}")
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if not 1 <= ways <= 64:
            raise ValueError(f"ways must be in [1, 64], got {ways}")
        for name, w in (weights or {}).items():
            if not w > 0:
                raise ValueError(f"weights[{name!r}] must be > 0, got {w}")
        self.capacity_bytes = capacity_bytes
        self._ways = ways
        self._sketch_sample = sketch_sample
        self._ttl = ttl
        self._ttls = dict(ttls or {})
        self._weights = dict(weights or {})
        self._clock = clock
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()

    # -- segments ------------------------------------------------------------------------------

    def _budget(self, name: str, names: set[str]) -> int:
        total = sum(self._weights.get(t, 1.0) for t in names | self._weights.keys())
        return int(self.capacity_bytes * self._weights.get(name, 1.0) / total)

    def _segment(self, spec: TableSpec) -> _Segment:
        seg = self._segments.get(spec.name)
        if seg is not None:
            if seg.spec != spec:
                raise SchemaMismatchError(
                    f"table {spec.name!r}: cached as {seg.spec}, now asked as {spec}"
                )
            return seg
        names = set(self._segments) | {spec.name}
        now = self._clock()
        for other, old in list(self._segments.items()):
            budget = self._budget(other, names)
            if budget != self._budget(other, names - {spec.name}):
                self._segments[other] = old.resized(budget, now)
                self._segments[other].metrics.bytes.set(self._segments[other].bytes_used)
        ttl = self._ttls.get(spec.name, self._ttl)
        seg = _Segment(
            spec,
            self._budget(spec.name, names),
            ways=self._ways,
            ttl=ttl,
            sketch_sample=self._sketch_sample,
        )
        self._segments[spec.name] = seg
        return seg

    # -- public operations ---------------------------------------------------------------------

    def get(self, spec: TableSpec, ids: Any, /) -> Lookup:
        """Cached rows for ``ids`` in request order; misses are zero rows with found=False."""
        ids = as_ids(spec.name, ids)
        start = time.perf_counter()
        with self._lock:
            seg = self._segment(spec)
            before = seg.hits
            looked = seg.get(ids, self._clock() if seg.ttl is not None else 0.0)
            found = seg.hits - before
        seg.metrics.record(found, ids.shape[0], time.perf_counter() - start)
        return looked

    def offer(self, spec: TableSpec, ids: Any, vectors: Any, /) -> int:
        """Rows fetched after a miss: cached ones are refreshed, new ones admitted if popular.

        Returns how many new rows were admitted. Call ``get`` for the ids first: admission
        relies on the sketch having seen the request.
        """
        ids = as_ids(spec.name, ids)
        vectors = as_vectors(spec, vectors, ids.shape[0])
        if ids.shape[0] == 0:
            return 0
        with self._lock:
            seg = self._segment(spec)
            admitted = seg.offer(ids, vectors, self._clock())
            seg.metrics.bytes.set(seg.bytes_used)
        return admitted

    def update(self, spec: TableSpec, ids: Any, vectors: Any, /) -> int:
        """Rows just written to the backend: refresh the cached ones, admit none.

        Writes (bulk loads above all) say nothing about what will be read, so they never
        displace rows. Returns how many cached rows were refreshed.
        """
        ids = as_ids(spec.name, ids)
        vectors = as_vectors(spec, vectors, ids.shape[0])
        if ids.shape[0] == 0:
            return 0
        with self._lock:
            seg = self._segment(spec)
            if seg.capacity == 0:
                return 0
            return seg.update(ids, vectors, self._clock()).refreshed

    def invalidate(self, table: str, ids: Any | None = None, /) -> int:
        """Drop the rows of ``ids`` (all rows of the table when None); returns how many."""
        with self._lock:
            seg = self._segments.get(table)
            if seg is None:
                return 0
            dropped = seg.invalidate(None if ids is None else as_ids(table, ids))
            seg.metrics.bytes.set(seg.bytes_used)
            return dropped

    def clear(self) -> None:
        """Drop every row of every table (budgets and frequency history stay)."""
        with self._lock:
            for seg in self._segments.values():
                seg.invalidate(None)
                seg.metrics.bytes.set(0)

    def stats(self, table: str, /) -> CacheStats:
        with self._lock:
            seg = self._segments.get(table)
            if seg is None:
                return CacheStats(0, 0, 0, 0, 0, 0)
            return seg.stats()

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return sum(s.bytes_used for s in self._segments.values())

    @property
    def bytes_allocated(self) -> int:
        with self._lock:
            return sum(s.bytes_allocated for s in self._segments.values())
