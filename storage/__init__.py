"""Embedding storage: a byte-bounded local cache in front of a backend, behind one contract.

Stages see only ``Store``; the composition root picks the backend and wraps it, e.g.
``TieredStore(EmbeddedStore(path), LocalCache(256 << 20))``.
"""

from storage.cache import CacheStats, LocalCache
from storage.embedded import EmbeddedStore
from storage.errors import StorageError
from storage.store import Lookup, Store, TableSpec
from storage.synthetic import generate_table, zipf_ids
from storage.tiered import TieredStore

__all__ = [
    "CacheStats",
    "EmbeddedStore",
    "LocalCache",
    "Lookup",
    "StorageError",
    "Store",
    "TableSpec",
    "TieredStore",
    "generate_table",
    "zipf_ids",
]
