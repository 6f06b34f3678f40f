"""The examples a user copies must keep working."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_custom_stage_example_runs_and_boosts_even_ids(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "custom_stage.py"), run_name="__main__")
    printed = capsys.readouterr().out.strip().strip("[]")
    scores = [float(x) for x in printed.split(",")]
    assert scores == pytest.approx([0.5, 0.6, 0.1])
