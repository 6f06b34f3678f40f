"""Embedding storage: a byte-bounded local cache in front of a backend, behind one contract.

Stages see only ``Store``; the composition root picks the backend and wraps it, e.g.
``TieredStore(EmbeddedStore(path), LocalCache(256 << 20))`` or
``TieredStore(AerospikeStore(settings), LocalCache(256 << 20))``. See docs/storage.md.
"""

from storage.aerospike_store import AerospikeSettings, AerospikeStore
from storage.cache import CacheStats, LocalCache
from storage.embedded import EmbeddedStore
from storage.errors import StorageError
from storage.results import ResultCache
from storage.store import Lookup, Store, TableSpec
from storage.synthetic import generate_table, zipf_ids
from storage.tiered import TieredStore

__all__ = [
    "AerospikeSettings",
    "AerospikeStore",
    "CacheStats",
    "EmbeddedStore",
    "LocalCache",
    "Lookup",
    "ResultCache",
    "StorageError",
    "Store",
    "TableSpec",
    "TieredStore",
    "generate_table",
    "zipf_ids",
]
