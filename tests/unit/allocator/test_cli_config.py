"""`jizhi allocator` settings: read once at the edge, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.errors import AllocatorConfigError
from jizhi.allocator_cli import load
from jizhi.cli import build_parser


def test_defaults_and_a_file(tmp_path: Path) -> None:
    assert load(None).stages == ["ingest", "features", "embed", "score", "rank"]
    f = tmp_path / "a.toml"
    f.write_text('stages = ["score"]\n[scaling]\ntarget_utilisation = 0.6\n')
    s = load(f)
    assert (s.stages, s.scaling.target_utilisation) == (["score"], 0.6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('stages = ["nope"]', "unknown"),
        ("[scaling]\ntarget_utilisation = 0", "target_utilisation"),
        ("surprise = 1", "surprise"),
        ("interval_s = [", "allocator config"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(AllocatorConfigError, match=match):
        load(f)


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(
        ["allocator", "--bootstrap", "h:1", "--dry-run", "--once", "--metrics-port", "9464"]
    )
    assert args.dry_run and args.once and args.bootstrap == "h:1" and args.metrics_port == 9464
