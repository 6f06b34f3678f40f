"""AerospikeStore: embedding rows in an Aerospike namespace on hybrid memory/SSD.

Layout: one record per (table, id): the namespace from the settings, the table name as the set,
the id as an integer key, and one blob bin ``v`` holding the row's raw little-endian bytes (the
most compact form: 128 bytes for 32 float32, no per-element encoding). Table shapes live in the
set ``jizhi_tables``, keyed by table name. With ``compose/aerospike/aerospike.conf`` the primary
index (64 bytes a record) stays in RAM and the records go to a file or device, the layout the
embedded store copies on one machine.

Calls and why:

- Lookups use ``batch_read`` (``get_many`` is deprecated since client 12), in parts of at most
  ``read_batch_max_keys`` read concurrently (``storage/_parts.py``): the client's timeout did not
  bound a big batch on shared cores, so the store stops waiting itself at the lookup's budget,
  ``read_total_timeout_ms`` or the request's remaining time (a lookup late past a request's
  deadline is worthless). A result with fewer records than keys (the real client's answer
  between a restart and the rebalance) is a failure of those keys, not an answer.
- Loads use ``batch_write`` in chunks, with a longer timeout and more retries: a load can wait,
  and it must not drop rows.
- A connection pool per node (``max_conns_per_node``) sized for the worker's threads; the client
  tends the cluster map itself, so a node that comes back is found without our help.

When the cluster is unreachable or slow, a lookup does not raise: it answers zeros for every id,
``found`` False and ``degraded`` True, counts ``jizhi_store_degraded_total{table}`` and sets
``jizhi_store_backend_up{backend="aerospike"}`` to 0. A circuit breaker (``storage/breaker.py``)
then stops calling for a while, probes, and closes by itself when the cluster answers again.
Only a call that cannot be answered at all (a table whose shape was never read) raises
``BackendUnavailableError``, which is retriable. Writes raise too: a loader must know.

Building the key tuples and joining the blobs are list comprehensions over the ids, which the
client's API leaves no way around; at ~0.3 us per id they are small beside the network round
trip, and only the local cache's misses get here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from storage._arrays import as_ids, as_vectors, last_wins, zeros
from storage._closing import ClosesOnExit
from storage._parts import Key, PartedReader
from storage.breaker import Breaker
from storage.errors import (
    BackendUnavailableError,
    SchemaMismatchError,
    SecurityNotEnabledError,
    StoreClosedError,
    TableExistsError,
    UnknownTableError,
)
from storage.metrics import BACKEND_ERRORS, BACKEND_UP, DEGRADED, TierMetrics
from storage.store import Ids, Lookup, Mask, TableSpec, Vectors

log = logging.getLogger(__name__)

TABLES_SET = "jizhi_tables"
BIN = "v"
_OK = 0  # AEROSPIKE_OK
_NOT_FOUND = 2  # AEROSPIKE_ERR_RECORD_NOT_FOUND
_SECURITY_OFF = (51, 52)  # SecurityNotSupported, SecurityNotEnabled
LATE = "LookupBudgetExceeded"
"""``error`` label of parts not back within the lookup's budget (no client error to name)."""
SHORT = "ShortBatchResult"
"""``error`` label of a ``batch_read`` that returned fewer records than keys, without raising."""


@functools.cache
def error_name(code: int) -> str:
    """The client's exception class for a record's result code (-15: ``NoResponse``)."""
    exc = _aerospike().exception
    for name in dir(exc):
        cls = getattr(exc, name)
        if (
            isinstance(cls, type)
            and issubclass(cls, exc.AerospikeError)
            and getattr(cls, "code", None) == code
        ):
            return name
    return f"code {code}"


class _Read(NamedTuple):
    """One lookup's rows by unique id; ``errors`` maps an error label to its first detail."""

    rows: Vectors
    ok: Mask
    failed: Mask
    errors: dict[str, str]


class AerospikeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the cluster is and how patient to be with it (``[store.aerospike]`` in TOML).

    Timeouts are in milliseconds. Reads are short because a lookup that arrives after the
    request's deadline is worthless; writes are long because a load should wait, not drop rows.
    """

    hosts: tuple[str, ...] = ("127.0.0.1:3000",)
    namespace: str = "jizhi"
    connect_timeout_ms: int = 1000
    read_total_timeout_ms: int = 20
    read_socket_timeout_ms: int = 10
    read_max_retries: int = 1
    write_total_timeout_ms: int = 5000
    write_socket_timeout_ms: int = 1000
    write_max_retries: int = 3
    max_conns_per_node: int = 64
    read_batch_max_keys: int = 1000
    read_threads: int = 4
    write_chunk: int = 2000
    breaker_failures: int = 3
    breaker_reset_s: float = 0.5
    breaker_max_reset_s: float = 10.0
    user: str = ""  # the password comes from JIZHI_AEROSPIKE_PASSWORD, never a file or flag

    def validate(self) -> None:
        """Raise ValueError naming every field out of range."""
        bad = [
            name
            for name in (
                "connect_timeout_ms",
                "read_total_timeout_ms",
                "read_socket_timeout_ms",
                "write_total_timeout_ms",
                "write_socket_timeout_ms",
                "max_conns_per_node",
                "read_batch_max_keys",
                "read_threads",
                "write_chunk",
                "breaker_failures",
            )
            if getattr(self, name) < 1
        ]
        bad += [n for n in ("read_max_retries", "write_max_retries") if getattr(self, n) < 0]
        if not self.hosts or any(not _host(h)[0] for h in self.hosts):
            bad.append("hosts")
        if not self.namespace:
            bad.append("namespace")
        if not 0 < self.breaker_reset_s <= self.breaker_max_reset_s:
            bad.append("breaker_reset_s")
        if bad:
            raise ValueError(f"store.aerospike: out of range: {', '.join(bad)}")

    def client_config(self) -> dict[str, Any]:
        """The client's configuration dict, policies included."""
        return {
            "hosts": [_host(h) for h in self.hosts],
            "connect_timeout": self.connect_timeout_ms,
            "max_conns_per_node": self.max_conns_per_node,
            "policies": {
                "read": self.read_policy(),
                "batch": self.read_policy(),
                "write": self.write_policy(),
            },
        }

    def read_policy(self) -> dict[str, int]:
        return {
            "total_timeout": self.read_total_timeout_ms,
            "socket_timeout": self.read_socket_timeout_ms,
            "max_retries": self.read_max_retries,
        }

    def write_policy(self) -> dict[str, int]:
        return {
            "total_timeout": self.write_total_timeout_ms,
            "socket_timeout": self.write_socket_timeout_ms,
            "max_retries": self.write_max_retries,
            "sleep_between_retries": 50,
        }


def _msg(exc: BaseException) -> str:
    """The client's message alone: its exceptions print as a tuple (code, msg, file, line)."""
    return str(getattr(exc, "msg", None) or exc)


def _code(exc: BaseException) -> object:
    """The result code the client raised with: its first argument, as the client prints it."""
    return exc.args[0] if exc.args else getattr(exc, "code", None)


def _host(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if not host:
        return spec, 3000
    try:
        return host, int(port)
    except ValueError:
        return "", 0


def _aerospike() -> Any:
    import aerospike  # noqa: PLC0415 - only deployments that choose this backend pay the import

    return aerospike


class AerospikeStore(ClosesOnExit):
    """The Store contract over an Aerospike cluster (see the module docstring).

    ``client_factory`` builds a client from the config dict (``aerospike.client`` by default);
    it is retried on the breaker's schedule, so a worker started before its cluster works as
    soon as the cluster does. ``specs`` declares table shapes up front, so lookups can degrade
    instead of failing even if the cluster is down when the worker starts.
    """

    backend = "aerospike"

    def __init__(
        self,
        settings: AerospikeSettings,
        /,
        *,
        specs: Sequence[TableSpec] = (),
        client_factory: Callable[[dict[str, Any]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings.validate()
        self.settings = settings
        self._factory = client_factory or (lambda conf: _aerospike().client(conf))
        self._client: Any = None
        self._specs: dict[str, TableSpec] = {s.name: s for s in specs}
        self._metrics: dict[str, TierMetrics] = {}
        self._closed = False
        self.breaker = Breaker(
            failures=settings.breaker_failures,
            reset_after=settings.breaker_reset_s,
            max_reset_after=settings.breaker_max_reset_s,
            clock=clock,
        )
        self._up = BACKEND_UP.labels(backend=self.backend)
        self._up.set(1)
        self._errors = _aerospike().exception.AerospikeError
        self._reader = PartedReader(
            max_keys=settings.read_batch_max_keys,
            threads=settings.read_threads,
            name="jizhi-aerospike",
        )

    # -- connection ----------------------------------------------------------------------------

    def _connected(self) -> Any:
        if self._closed:
            raise StoreClosedError(f"aerospike store {self.settings.hosts}: used after close()")
        if self._client is None:
            conf = self.settings.client_config()
            if self.settings.user:
                import os  # noqa: PLC0415

                conf["user"] = self.settings.user
                conf["password"] = os.environ.get("JIZHI_AEROSPIKE_PASSWORD", "")
            try:
                client = self._factory(conf)
                if hasattr(client, "is_connected") and not client.is_connected():
                    client.connect()
            except self._errors as e:
                if self.settings.user and _code(e) in _SECURITY_OFF:
                    raise SecurityNotEnabledError(
                        f"aerospike {', '.join(self.settings.hosts)}: store.aerospike.user is "
                        f"{self.settings.user!r} but the server has security disabled; remove "
                        "the user (and JIZHI_AEROSPIKE_PASSWORD) or enable security on it"
                    ) from e
                raise
            self._client = client
        return self._client

    def _failed(self, what: str, errors: dict[str, object]) -> None:
        """Count a failed call once per error class it met; the breaker hears of it once."""
        for error in errors:
            BACKEND_ERRORS.labels(backend=self.backend, error=error).inc()
        was = self.breaker.state
        self.breaker.failure()
        if self.breaker.state != "closed":
            self._up.set(0)
        if was == "closed":
            first = next(iter(errors.items()))
            log.warning(
                "aerospike %s failed (%s: %s); lookups degrade until it answers", what, *first
            )

    def _succeeded(self) -> None:
        if self.breaker.state != "closed":
            log.warning("aerospike answers again; lookups are no longer degraded")
        self.breaker.success()
        self._up.set(1)

    def _key(self, table: str, ident: int) -> tuple[str, str, int]:
        return (self.settings.namespace, table, ident)

    # -- tables --------------------------------------------------------------------------------

    def create_table(self, spec: TableSpec, /, *, exist_ok: bool = False) -> None:
        """Record a table's shape; with ``exist_ok`` an identical existing table is fine."""
        try:
            existing: TableSpec | None = self.table(spec.name)
        except UnknownTableError:
            existing = None
        if existing is not None:
            if exist_ok and existing == spec:
                return
            raise TableExistsError(f"table {spec.name!r}: already in aerospike as {existing}")
        bins = {"name": spec.name, "dim": spec.dim, "dtype": spec.dtype}
        try:
            self._connected().put(self._key(TABLES_SET, spec.name), bins)  # type: ignore[arg-type]
        except self._errors as e:
            self._failed("create_table", {type(e).__name__: e})
            raise BackendUnavailableError(
                f"table {spec.name!r}: cannot record it in aerospike "
                f"{', '.join(self.settings.hosts)} ({type(e).__name__}: {_msg(e)})"
            ) from e
        self._specs[spec.name] = spec

    def table(self, name: str, /) -> TableSpec:
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        aero = _aerospike()
        try:
            _, _, bins = self._connected().get((self.settings.namespace, TABLES_SET, name))
        except aero.exception.RecordNotFound as e:
            raise UnknownTableError(
                f"table {name!r}: not in aerospike namespace {self.settings.namespace!r} at "
                f"{', '.join(self.settings.hosts)}; load it first (jizhi embeddings demo-tables "
                "for the demo's, jizhi embeddings load/generate for others)"
            ) from e
        except self._errors as e:
            self._failed("table", {type(e).__name__: e})
            raise BackendUnavailableError(
                f"table {name!r}: shape unknown, aerospike {', '.join(self.settings.hosts)} "
                f"unreachable ({type(e).__name__}: {_msg(e)}); retry once it is up"
            ) from e
        spec = TableSpec(str(bins["name"]), int(bins["dim"]), bins["dtype"])
        self._specs[name] = spec
        return spec

    def _metrics_of(self, table: str) -> TierMetrics:
        m = self._metrics.get(table)
        if m is None:
            m = self._metrics[table] = TierMetrics(table, self.backend)
        return m

    # -- rows ----------------------------------------------------------------------------------

    def get_many(self, table: str, ids: Any, /, *, deadline_ms: float | None = None) -> Lookup:
        """Rows for ``ids``, back within ``read_total_timeout_ms`` or the request's deadline.

        ``deadline_ms`` (Unix epoch milliseconds, as on events) shortens the budget to what the
        request has left. Keys the cluster did not answer in time, or answered with an error or
        not at all, come back degraded; nothing here raises for a backend that misbehaves.
        """
        checked = as_ids(table, ids)
        spec = self.table(table)
        n = checked.shape[0]
        start = time.perf_counter()
        if n == 0:
            return Lookup(zeros(spec, 0), np.zeros(0, dtype=np.bool_))
        budget = self.settings.read_total_timeout_ms / 1000.0
        if deadline_ms is not None:
            budget = min(budget, deadline_ms / 1000.0 - time.time())
        if budget <= 0 or not self.breaker.allow():
            return self._degraded(spec, n, np.ones(n, dtype=np.bool_))
        uniq, back = np.unique(checked, return_inverse=True)
        try:
            got = self._read(spec, uniq, budget)
        except BaseException:
            self.breaker.failure()  # a probe that raised must not leave the breaker waiting on it
            raise
        if got.errors:
            self._failed("batch_read", dict(got.errors))
        else:
            self._succeeded()
        found = got.ok[back]
        hits = int(np.count_nonzero(found))
        self._metrics_of(table).record(hits, n, time.perf_counter() - start)
        self._metrics_of(table).fallback.inc(n - hits)
        if not got.errors:
            return Lookup(got.rows[back], found)
        lost = got.failed[back]
        DEGRADED.labels(table=table).inc(int(np.count_nonzero(lost)))
        return Lookup(got.rows[back], found, lost)

    def prefetch(self, table: str, ids: Any, /, *, budget_ms: float) -> Lookup:
        """A lookup for warming a cache: bounded by ``budget_ms``, and silent when it fails.

        Neither the breaker nor ``jizhi_store_degraded_total`` hears of it (a warm-up that
        asks too much must not open the breaker or count as degraded answers before the first
        request); ``degraded`` still says which keys did not come back, so the caller can
        slow down.
        """
        checked = as_ids(table, ids)
        spec = self.table(table)
        n = checked.shape[0]
        if n == 0 or self.breaker.state != "closed":  # an open breaker's probe is a lookup's
            return Lookup(zeros(spec, n), np.zeros(n, dtype=np.bool_), np.ones(n, np.bool_))
        uniq, back = np.unique(checked, return_inverse=True)
        got = self._read(spec, uniq, budget_ms / 1000.0)
        return Lookup(got.rows[back], got.ok[back], got.failed[back] if got.errors else None)

    def _read(self, spec: TableSpec, uniq: Ids, budget: float) -> _Read:
        rows = zeros(spec, uniq.shape[0])
        ok = np.zeros(uniq.shape[0], dtype=np.bool_)
        failed = np.zeros(uniq.shape[0], dtype=np.bool_)
        errors: dict[str, str] = {}
        deadline = time.monotonic() + budget
        try:
            client = self._connected()
        except self._errors as e:
            failed[:] = True
            return _Read(rows, ok, failed, {type(e).__name__: str(e)})
        policy = self.settings.read_policy()

        def read(part: Sequence[Key], left_ms: int) -> Any:
            return client.batch_read(
                list(part),
                [BIN],
                {**policy, "total_timeout": min(policy["total_timeout"], left_ms)},
            )

        keys = [(self.settings.namespace, spec.name, i) for i in uniq.tolist()]
        for part in self._reader.read(read, keys, deadline):
            span = slice(part.lo, part.hi)
            size = part.hi - part.lo
            if part.late:
                failed[span] = True
                errors.setdefault(LATE, f"{size} keys not back within {budget * 1000:.0f} ms")
                continue
            if part.error is not None:
                if not isinstance(part.error, self._errors):
                    raise part.error
                failed[span] = True
                errors.setdefault(type(part.error).__name__, str(part.error))
                continue
            records = getattr(part.result, "batch_records", None)
            if not isinstance(records, list) or len(records) != size:
                # the real client's answer between a restart and the rebalance: no records
                got = len(records) if isinstance(records, list) else type(records).__name__
                failed[span] = True
                errors.setdefault(SHORT, f"{got} records for {size} keys")
                continue
            codes = np.fromiter((r.result for r in records), dtype=np.int64, count=size)
            good = codes == _OK
            if good.any():
                blob = b"".join([r.record[2][BIN] for r in records if r.result == _OK])
                rows[part.lo : part.hi][good] = np.frombuffer(blob, dtype=spec.dtype).reshape(
                    -1, spec.dim
                )
            ok[span] = good
            # a sub-batch of a node that timed out leaves its own error code on its records
            bad = ~good & (codes != _NOT_FOUND)
            if bad.any():
                failed[span] = bad
                code = int(codes[bad][0])
                errors.setdefault(
                    error_name(code), f"{int(bad.sum())} of {size} records failed, code {code}"
                )
        return _Read(rows, ok, failed, errors)

    def _degraded(self, spec: TableSpec, n: int, lost: Mask) -> Lookup:
        DEGRADED.labels(table=spec.name).inc(n)
        self._metrics_of(spec.name).fallback.inc(n)
        return Lookup(zeros(spec, n), np.zeros(n, dtype=np.bool_), lost)

    def put_many(self, table: str, ids: Any, vectors: Any, /) -> None:
        """Write rows in chunks of ``write_chunk`` with ``batch_write``; raises if any fails.

        A put is not atomic across records (Aerospike has no multi-record transactions here),
        but each record is replaced whole, so a crash leaves every vector old or new.
        """
        from aerospike_helpers.batch.records import BatchRecords, Write  # noqa: PLC0415
        from aerospike_helpers.operations import operations  # noqa: PLC0415

        spec = self.table(table)
        checked = as_ids(table, ids)
        rows = as_vectors(spec, vectors, checked.shape[0])
        uniq, last = last_wins(checked)
        data = np.ascontiguousarray(rows[last]).astype(spec.dtype, copy=False)
        if data.dtype.byteorder == ">":
            raise SchemaMismatchError(f"table {table!r}: big-endian rows")
        row_bytes = spec.dim * data.itemsize
        flat = data.tobytes()
        chunk = self.settings.write_chunk
        policy = self.settings.write_policy()
        for lo in range(0, uniq.shape[0], chunk):
            batch = BatchRecords(
                [
                    Write(
                        self._key(table, ident),
                        [
                            operations.write(
                                BIN, flat[(lo + j) * row_bytes : (lo + j + 1) * row_bytes]
                            )
                        ],
                    )
                    for j, ident in enumerate(uniq[lo : lo + chunk].tolist())
                ]
            )
            try:
                result = self._connected().batch_write(batch, policy)
            except self._errors as e:
                self._failed("batch_write", {type(e).__name__: e})
                raise BackendUnavailableError(
                    f"table {table!r}: batch_write of ids {int(uniq[lo])}.. to aerospike "
                    f"{', '.join(self.settings.hosts)} failed ({type(e).__name__}: {_msg(e)})"
                ) from e
            bad = [r for r in result.batch_records if r.result != _OK]
            if bad:
                raise BackendUnavailableError(
                    f"table {table!r}: {len(bad)} of {len(batch.batch_records)} writes failed, "
                    f"first id {bad[0].key[2]} with code {bad[0].result}"
                )
            self._succeeded()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        if self._client is not None:
            with contextlib.suppress(self._errors):
                self._client.close()
            self._client = None
