"""`jizhi allocator` settings: read once at the edge, every mistake named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from allocator.errors import AllocatorConfigError
from jizhi.allocator_cli import load
from jizhi.cli import build_parser


def test_defaults_and_a_file(tmp_path: Path) -> None:
    assert load(None).stages == []  # every stage the pipeline declares, read with the pipeline
    f = tmp_path / "a.toml"
    f.write_text('stages = ["score"]\n[scaling]\ntarget_utilisation = 0.6\n')
    s = load(f)
    assert (s.stages, s.scaling.target_utilisation) == (["score"], 0.6)


@pytest.mark.parametrize(
    ("text", "match"),
    [
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


def test_a_stage_the_pipeline_does_not_declare_is_named_when_the_pipeline_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The allocator's ``stages`` are checked against the pipeline the config declares (users'
    stages included), not against a fixed list: at start, naming the pipeline and its stages."""
    from jizhi.cli import main  # noqa: PLC0415

    f = tmp_path / "a.toml"
    f.write_text('stages = ["ingest", "nope"]\n')
    assert load(f).stages == ["ingest", "nope"]  # the file alone cannot tell
    assert main(["allocator", "--allocator-config", str(f), "--plan", "4"]) == 2
    err = capsys.readouterr().err
    assert "stages: ['nope'] are not stages of pipeline 'demo'" in err
    assert "['ingest', 'features', 'embed', 'score', 'rank']" in err


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(
        ["allocator", "--bootstrap", "h:1", "--dry-run", "--once", "--metrics-port", "9464"]
    )
    assert args.dry_run and args.once and args.bootstrap == "h:1" and args.metrics_port == 9464
    assert args.budget is None and args.pipeline is None  # unlimited, every declared service
    args = build_parser().parse_args(["allocator", "--budget", "12", "--pipeline", "home"])
    assert (args.budget, args.pipeline) == (12, "home")


def test_plan_prints_the_split_from_recorded_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """embed is store-bound (each consumer adds less); the proportional split, from
    one-consumer rates, gives it the same share as score; the planner finds the better split."""
    from allocator.history import History, Record  # noqa: PLC0415
    from jizhi.cli import main  # noqa: PLC0415

    history = History(tmp_path / "h")
    capacity: dict[str, Callable[[int], float]] = {
        "ingest": lambda n: 1000.0 * n,
        "embed": lambda n: 200.0 * n**0.5,
        "score": lambda n: 150.0 * n,
    }
    t = 1_790_000_000.0
    history.record(
        [
            Record(t + n, stage, n, 5000.0, f(n), 1e6)
            for stage, f in capacity.items()
            for n in range(1, 11)
        ]
        + [Record(t + 20, "score", 2, 100.0, 100.0, 10.0)]  # keeping up: not a capacity
    )
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'stages = ["ingest", "embed", "score"]\nhistory_dir = "{tmp_path / "h"}"\n')
    assert main(["allocator", "--allocator-config", str(cfg), "--plan", "10"]) == 0
    out = capsys.readouterr().out
    assert "30 backlogged looks" in out
    assert "ingest            1             1" in out
    assert "embed             6             4" in out
    assert "score             3             5" in out
    assert "planned 450/s, proportional 400/s (1.12x)" in out


def test_plan_without_history_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jizhi.cli import main  # noqa: PLC0415

    cfg = tmp_path / "a.toml"
    cfg.write_text(f'history_dir = "{tmp_path / "none"}"\n')
    assert main(["allocator", "--allocator-config", str(cfg), "--plan", "8"]) == 2
    assert "no backlogged looks recorded for ingest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('actuator = "compose"\nassignment = true', "assignment"),
        ('stages = ["rank"]\n[compose]\nservices = { score = "w" }', "not in stages"),
        ('actuator = "swarm"', "actuator"),
        ('actuator = "kubernetes"\nassignment = true', "assignment"),
        ('stages = ["rank"]\n[kubernetes]\ndeployments = { score = "d" }', "kubernetes.deploy"),
    ],
)
def test_compose_mistakes_are_named(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(AllocatorConfigError, match=match):
        load(f)


def test_the_compose_actuator_is_built_from_its_table(tmp_path: Path) -> None:
    import argparse  # noqa: PLC0415

    from allocator.actuators.compose import ComposeActuator  # noqa: PLC0415
    from allocator.actuators.local import LocalActuator  # noqa: PLC0415
    from jizhi.allocator_cli import _actuator  # noqa: PLC0415

    f = tmp_path / "a.toml"
    f.write_text(f'actuator = "compose"\n[compose]\nproject_dir = "{tmp_path}"\n')
    args = argparse.Namespace(bootstrap="h:1", config=None)
    assert isinstance(_actuator(load(f), args, "demo"), ComposeActuator)
    local = _actuator(load(None), args, "demo")
    assert isinstance(local, LocalActuator)
    local.close()
    f.write_text('actuator = "compose"\n[compose]\nproject_dir = "/nonexistent"\n')
    with pytest.raises(AllocatorConfigError, match="project_dir"):
        _actuator(load(f), args, "demo")


@pytest.mark.parametrize(
    ("text", "plans"),
    [
        ("", True),  # the local actuator names its workers: plans by default
        ("assignment = false", False),
        ('actuator = "compose"', False),  # anonymous replicas follow the group's assignor
        ('actuator = "kubernetes"', False),
    ],
)
def test_plans_by_default_where_workers_are_named(tmp_path: Path, text: str, plans: bool) -> None:
    f = tmp_path / "a.toml"
    f.write_text(text)
    assert load(f).plans is plans


def test_plan_splits_the_cores_across_every_service_by_priority(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two services with the same history, 600 req/s at their peak: hi (priority 10) gets the
    9 consumers it needs, lo the 3 left, and is told what it would admit."""
    from allocator.history import History, Record  # noqa: PLC0415
    from jizhi.cli import main  # noqa: PLC0415

    t = 1_790_000_000.0
    capacity: dict[str, Callable[[int], float]] = {
        "ingest": lambda n: 1000.0 * n,
        "score": lambda n: 100.0 * n,
    }
    for name in ("hi", "lo"):
        History(tmp_path / "h" / name).record(
            [
                Record(t + n, stage, n, 600.0, f(n), 1e6)
                for stage, f in capacity.items()
                for n in range(1, 11)
            ]
        )
    cfg = tmp_path / "jizhi.toml"
    cfg.write_text(
        '[[pipelines]]\nname = "lo"\npriority = 1\n\n[[pipelines]]\nname = "hi"\npriority = 10\n'
    )
    alloc = tmp_path / "a.toml"
    alloc.write_text(f'stages = ["ingest", "score"]\nhistory_dir = "{tmp_path / "h"}"\n')
    argv = ["allocator", "--config", str(cfg), "--allocator-config", str(alloc), "--plan", "12"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    hi = out[out.index("== hi") :]
    lo = out[out.index("== lo") : out.index("== hi")]
    assert (
        "== hi (priority 10): 9 of 12 cores, needs 9 for its peak 600 req/s (within_budget)" in hi
    )
    assert "score             8" in hi and "planned 800/s" in hi
    assert "== lo (priority 1): 3 of 12 cores, needs 9 for its peak 600 req/s (short)" in lo
    assert "score             2" in lo
    assert "admission: 150 req/s of its peak 600 (the rest shed at ingest)" in lo
    assert main([*argv, "--pipeline", "lo"]) == 0  # alone, lo gets all it needs (its history)
    alone = capsys.readouterr().out
    assert "score             8" in alone and f"{tmp_path / 'h' / 'lo'}" in alone
