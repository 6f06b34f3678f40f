"""Write the tables the example stages read, for the demo's synthetic items.

    python examples/make_tables.py [--items 1000000] [--out examples/tables]

makes ``blocklist.csv`` (1% of the items, at random) and ``item_categories.npy`` (each item in
one of 40 categories, skewed as catalogues are), the files examples/pipelines.toml names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_tables(out: Path, *, items: int = 1_000_000, seed: int = 11) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    blocked = np.sort(rng.choice(items, size=max(1, items // 100), replace=False))
    blocklist = out / "blocklist.csv"
    blocklist.write_text("item_id\n" + "\n".join(map(str, blocked.tolist())) + "\n")
    weights = 1.0 / np.arange(1, 41) ** 0.8
    cats = rng.choice(40, size=items, p=weights / weights.sum()).astype(np.int16)
    categories = out / "item_categories.npy"
    np.save(categories, cats)
    return blocklist, categories


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path("examples/tables"))
    args = ap.parse_args()
    for path in make_tables(args.out, items=args.items):
        print(path)


if __name__ == "__main__":
    main()
