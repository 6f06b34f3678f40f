"""``jizhi embeddings load|generate``: inputs, the same rows as the library, and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jizhi.cli import main
from jizhi.config import Settings, StoreSettings
from jizhi.embeddings_cli import destination
from jizhi.synth import WorldSpec, ensure_world
from storage import EmbeddedStore, TableSpec
from storage.aerospike_store import AerospikeSettings
from storage.synthetic import synthetic_rows


def _rows(store: Path, table: str, ids: np.ndarray) -> np.ndarray:
    with EmbeddedStore(store, mode="r") as s:
        got = s.get_many(table, ids)
        assert got.found.all()
        out: np.ndarray = got.vectors
        return out


def test_generate_writes_the_seeded_table_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "home"))
    store = tmp_path / "db"
    argv = ["embeddings", "generate", "--table", "items", "--rows", "5000", "--dim", "8"]
    argv += ["--store", str(store), "--chunk", "1000", "--no-progress"]
    calls = 0
    real_put = EmbeddedStore.put_many

    def dying_put(self: EmbeddedStore, *args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C, mid-load
        real_put(self, *args)

    monkeypatch.setattr(EmbeddedStore, "put_many", dying_put)
    assert main(argv) == 130
    monkeypatch.setattr(EmbeddedStore, "put_many", real_put)
    with EmbeddedStore(store, mode="r") as s:
        assert s.count("items") == 2000
    assert main(argv) == 0
    assert "resuming 'items' at row 2,000" in capsys.readouterr().err
    ids = np.arange(5000)
    expected = synthetic_rows(TableSpec("items", 8), 7, 0, 5000)
    np.testing.assert_array_equal(_rows(store, "items", ids), expected)


def test_load_npy_with_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "home"))
    vectors = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) * 7 + 11
    np.save(tmp_path / "v.npy", vectors)
    np.save(tmp_path / "ids.npy", ids)
    store = tmp_path / "db"
    argv = ["embeddings", "load", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.npy")]
    assert main([*argv, "--table", "t", "--store", str(store), "--chunk", "64"]) == 0
    np.testing.assert_array_equal(_rows(store, "t", ids), vectors)


def test_load_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "home"))
    vectors = np.random.default_rng(1).standard_normal((250, 6)).astype(np.float32)
    ids = np.arange(250, dtype=np.int64)[::-1].copy()
    table = pa.table(
        {"id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 6)}
    )
    pq.write_table(table, tmp_path / "v.parquet", row_group_size=100)
    store = tmp_path / "db"
    argv = ["embeddings", "load", str(tmp_path / "v.parquet"), "--table", "t"]
    assert main([*argv, "--store", str(store), "--chunk", "64", "--no-progress"]) == 0
    np.testing.assert_array_equal(_rows(store, "t", ids), vectors)


def test_bad_input_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.csv").write_text("1,2")
    argv = ["embeddings", "load", str(tmp_path / "x.csv"), "--table", "t"]
    assert main([*argv, "--store", str(tmp_path / "db")]) == 2
    assert "expected a .npy or .parquet file" in capsys.readouterr().err


def test_a_finished_load_is_not_resumed_into_another_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the checkpoint ignored where rows went, so the second run said "resuming 'items'
    at row 3,000" and wrote nothing."""
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "home"))
    argv = ["embeddings", "generate", "--table", "items", "--rows", "3000", "--dim", "4"]
    argv += ["--chunk", "1000", "--no-progress"]
    assert main([*argv, "--store", str(tmp_path / "a")]) == 0
    assert main([*argv, "--store", str(tmp_path / "b")]) == 0
    assert "resuming" not in capsys.readouterr().err
    with EmbeddedStore(tmp_path / "b", mode="r") as s:
        assert s.count("items") == 3000


def test_the_destination_names_backend_address_namespace_and_table(tmp_path: Path) -> None:
    embedded = Settings(store=StoreSettings(path=str(tmp_path / "a")))
    aero = Settings(
        store=StoreSettings(
            backend="aerospike",
            aerospike=AerospikeSettings(hosts=("h2:3000", "h1:3000"), namespace="ns"),
        )
    )
    assert destination(embedded, "items") == {
        "backend": "embedded",
        "path": str((tmp_path / "a").resolve()),
        "table": "items",
    }
    assert destination(aero, "items") == {
        "backend": "aerospike",
        "hosts": ["h1:3000", "h2:3000"],
        "namespace": "ns",
        "set": "items",
    }


def test_demo_tables_hold_the_demo_worlds_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "home"))
    world = WorldSpec(users=300, items=700, dim=4, seed=3)
    argv = ["embeddings", "demo-tables", "--users", "300", "--items", "700", "--dim", "4"]
    assert main([*argv, "--seed", "3", "--store", str(tmp_path / "db"), "--no-progress"]) == 0
    built = ensure_world(world, tmp_path / "worlds")
    for name, rows in (("users", 300), ("items", 700)):
        ids = np.arange(rows)
        np.testing.assert_array_equal(
            _rows(tmp_path / "db", name, ids), _rows(built.store_path, name, ids)
        )
