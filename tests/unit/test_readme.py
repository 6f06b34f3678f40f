"""The README's configuration snippets must be settings jizhi accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from jizhi.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SNIPPETS = re.findall(r"```toml\n(.*?)```", README, re.S)


def test_the_readme_has_toml_snippets() -> None:
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_every_toml_snippet_is_valid_settings(snippet: str) -> None:
    msgspec.convert(tomllib.loads(snippet), Settings)
