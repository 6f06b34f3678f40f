"""A stand-in for the Aerospike client that fails the way the real one was seen to fail.

What the real client did against an Aerospike 8.1 server on 2 shared cores (see
/work/shared/REFERENCES.md), and the state or knob here that reproduces it:

- ``"rebalancing"``: between a restart and the namespace's rebalance, ``batch_read`` returned
  an *empty* record list instead of raising (about 240 such calls in 5 s).
- ``"paused"`` (SIGSTOP): calls wait out their ``total_timeout``, then raise the client's
  ``TimeoutError`` (code 9).
- ``"stopped"``: the process is gone; the client raises its ``ConnectionError`` (-10) at once.
  (Not measured; the class the client uses for a refused connection.)
- ``latency_per_key_s``: a batch takes time proportional to its size, and the client's
  ``total_timeout`` does not bound it (12,800 keys: ~97 ms with a 20 ms timeout).
- ``fail_over_keys``: a batch larger than this comes back with every record failed with
  result -15 (``NoResponse``), as the 12,800-key batches did.
- ``security_off``: a user and password given to a server without security make the client
  refuse with code 51.

Answers use the client's own ``BatchRecord``/``BatchRecords`` types and exception classes, so the
store cannot tell this from the real thing on any path these tests walk.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

import aerospike
import numpy as np
from aerospike_helpers.batch.records import BatchRecord, BatchRecords

State = Literal["up", "paused", "stopped", "rebalancing"]
NO_RESPONSE = -15

_exc: Any = aerospike.exception  # type: ignore[attr-defined]


def _error(cls: Any, code: int, msg: str, in_doubt: bool = False) -> Any:
    """An exception as the client raises it: the tuple as args, and the same as attributes."""
    exc = cls(code, msg, "standin", 0, in_doubt)
    exc.code, exc.msg, exc.file, exc.line, exc.in_doubt = code, msg, "standin", 0, in_doubt
    return exc


def row(i: int, dim: int = 4) -> bytes:
    """The stored blob of a row whose every element is ``i``: easy to check after a lookup."""
    return np.full(dim, i, dtype=np.float32).tobytes()


class StandInClient:
    """Thread-safe; ``rows`` maps (set, id) to the blob bin, ``calls`` the sizes asked for."""

    def __init__(
        self,
        rows: dict[tuple[str, int], bytes] | None = None,
        *,
        state: State = "up",
        latency_per_key_s: float = 0.0,
        fail_over_keys: int | None = None,
        security_off: bool = False,
    ) -> None:
        self.rows = dict(rows or {})
        self.state: State = state
        self.latency_per_key_s = latency_per_key_s
        self.fail_over_keys = fail_over_keys
        self.security_off = security_off
        self.calls: list[int] = []
        self.policies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, table: str, ids: range, dim: int = 4, **kw: Any) -> StandInClient:
        return cls({(table, i): row(i, dim) for i in ids}, **kw)

    def factory(self, conf: dict[str, Any]) -> StandInClient:
        """``client_factory`` for the store: refuses as the real one does when it would."""
        if self.security_off and conf.get("user"):
            raise _error(_exc.ClientError, 51, "Failed to connect")
        if self.state == "stopped":
            raise _error(_exc.ConnectionError, -10, "Failed to connect")
        return self

    def is_connected(self) -> bool:
        return True

    def batch_read(
        self, keys: list[tuple[str, str, int]], bins: Any = None, policy: Any = None
    ) -> BatchRecords:
        with self._lock:
            self.calls.append(len(keys))
            self.policies.append(dict(policy or {}))
            state = self.state
        timeout_s = (policy or {}).get("total_timeout", 1000) / 1000.0
        if state == "stopped":
            raise _error(_exc.ConnectionError, -10, "Connection refused")
        if state == "paused":
            time.sleep(min(timeout_s, 1.0))
            raise _error(_exc.TimeoutError, 9, "Timeout", in_doubt=True)
        if state == "rebalancing":
            return BatchRecords([])
        time.sleep(self.latency_per_key_s * len(keys))
        overloaded = self.fail_over_keys is not None and len(keys) > self.fail_over_keys
        out = []
        for key in keys:
            rec = BatchRecord(key)
            blob = self.rows.get((key[1], key[2]))
            if overloaded:
                rec.result = NO_RESPONSE
            elif blob is not None:
                rec.result, rec.record = 0, (key, {}, {"v": blob})
            else:
                rec.result = 2
            out.append(rec)
        return BatchRecords(out)

    def get(self, key: tuple[str, str, Any]) -> Any:
        raise _error(_exc.RecordNotFound, 2, "Record not found")

    def close(self) -> None:
        pass
