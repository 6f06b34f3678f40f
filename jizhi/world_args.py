"""The synthetic-world flags shared by `jizhi demo`, `jizhi worker` and `jizhi publish`, so the
processes of one deployment agree on the data (same flags, same world)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jizhi.synth import WorldSpec

_DEFAULT = WorldSpec()


def add_world_args(parser: argparse.ArgumentParser, *, world_dir: bool = True) -> None:
    g = parser.add_argument_group("synthetic world (must match across workers and publishers)")
    g.add_argument(
        "--users", type=int, default=_DEFAULT.users, help=f"user rows ({_DEFAULT.users})"
    )
    g.add_argument(
        "--items", type=int, default=_DEFAULT.items, help=f"item rows ({_DEFAULT.items})"
    )
    g.add_argument(
        "--dim", type=int, default=_DEFAULT.dim, help=f"embedding dimension ({_DEFAULT.dim})"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=_DEFAULT.seed,
        help=f"seed of data, model, requests ({_DEFAULT.seed})",
    )
    if world_dir:
        g.add_argument(
            "--world-dir",
            type=Path,
            default=None,
            help="where generated data is kept ($JIZHI_HOME/worlds)",
        )


def world_spec(args: argparse.Namespace, context_dim: int) -> WorldSpec:
    return WorldSpec(
        users=args.users, items=args.items, dim=args.dim, context_dim=context_dim, seed=args.seed
    )
