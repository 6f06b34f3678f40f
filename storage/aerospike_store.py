"""AerospikeStore: embedding rows in an Aerospike namespace on hybrid memory/SSD.

Layout: one record per (table, id): the namespace from the settings, the table name as the set,
the id as an integer key, and one blob bin ``v`` holding the row's raw little-endian bytes (the
most compact form: 128 bytes for 32 float32, no per-element encoding). Table shapes live in the
set ``jizhi_tables``, keyed by table name. With ``compose/aerospike/aerospike.conf`` the primary
index (64 bytes a record) stays in RAM and the records go to a file or device, the layout the
embedded store copies on one machine.

Calls and why:

- Lookups use ``batch_read`` (``get_many`` is deprecated since client 12): one call per
  micro-batch; the client splits it per owning node and runs the sub-batches in parallel. A
  read is bounded by ``read_total_timeout_ms`` (a few ms: a lookup late past a request's deadline
  is worthless) with one retry inside that budget for a lost packet.
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
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from storage._arrays import as_ids, as_vectors, last_wins, zeros
from storage._closing import ClosesOnExit
from storage.breaker import Breaker
from storage.errors import (
    BackendUnavailableError,
    SchemaMismatchError,
    StoreClosedError,
    TableExistsError,
    UnknownTableError,
)
from storage.metrics import BACKEND_ERRORS, BACKEND_UP, DEGRADED, TierMetrics
from storage.store import Lookup, Mask, TableSpec

log = logging.getLogger(__name__)

TABLES_SET = "jizhi_tables"
BIN = "v"
_OK = 0  # AEROSPIKE_OK
_NOT_FOUND = 2  # AEROSPIKE_ERR_RECORD_NOT_FOUND


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
            client = self._factory(conf)
            if hasattr(client, "is_connected") and not client.is_connected():
                client.connect()
            self._client = client
        return self._client

    def _failed(self, what: str, exc: BaseException) -> None:
        BACKEND_ERRORS.labels(backend=self.backend, error=type(exc).__name__).inc()
        was = self.breaker.state
        self.breaker.failure()
        if self.breaker.state != "closed":
            self._up.set(0)
        if was == "closed":
            log.warning("aerospike %s failed (%s); lookups degrade until it answers", what, exc)

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
            self._failed("create_table", e)
            raise BackendUnavailableError(f"table {spec.name!r}: cannot record it: {e}") from e
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
                f"table {name!r}: not in namespace {self.settings.namespace}"
            ) from e
        except self._errors as e:
            self._failed("table", e)
            raise BackendUnavailableError(
                f"table {name!r}: shape unknown, aerospike {self.settings.hosts} unreachable: {e}"
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

    def get_many(self, table: str, ids: Any, /) -> Lookup:
        checked = as_ids(table, ids)
        spec = self.table(table)
        n = checked.shape[0]
        start = time.perf_counter()
        metrics = self._metrics_of(table)
        if n == 0:
            return Lookup(zeros(spec, 0), np.zeros(0, dtype=np.bool_))
        if not self.breaker.allow():
            return self._degraded(spec, n, np.ones(n, dtype=np.bool_))
        uniq, back = np.unique(checked, return_inverse=True)
        keys = [(self.settings.namespace, table, i) for i in uniq.tolist()]
        try:
            records = self._connected().batch_read(keys, [BIN]).batch_records
        except self._errors as e:
            self._failed("batch_read", e)
            return self._degraded(spec, n, np.ones(n, dtype=np.bool_))
        codes = np.fromiter((r.result for r in records), dtype=np.int64, count=len(records))
        ok = codes == _OK
        blob = b"".join([r.record[2][BIN] for r in records if r.result == _OK])
        rows = zeros(spec, uniq.shape[0])
        rows[ok] = np.frombuffer(blob, dtype=spec.dtype).reshape(-1, spec.dim)
        # a sub-batch of a node that timed out leaves its own error code on its records
        failed = ~ok & (codes != _NOT_FOUND)
        if failed.any():
            self._failed(
                "batch_read", TimeoutError(f"{int(failed.sum())} records: {codes[failed][0]}")
            )
        else:
            self._succeeded()
        found = ok[back]
        hits = int(np.count_nonzero(found))
        metrics.record(hits, n, time.perf_counter() - start)
        if failed.any():
            lost = failed[back]
            DEGRADED.labels(table=table).inc(int(np.count_nonzero(lost)))
            metrics.fallback.inc(n - hits)
            return Lookup(rows[back], found, lost)
        metrics.fallback.inc(n - hits)
        return Lookup(rows[back], found)

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
                self._failed("batch_write", e)
                raise BackendUnavailableError(
                    f"table {table!r}: batch_write of ids {int(uniq[lo])}.. failed: {e}"
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
        if self._client is not None:
            with contextlib.suppress(self._errors):
                self._client.close()
            self._client = None
