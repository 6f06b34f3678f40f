"""Tests of the compose stack: they need a Docker daemon and the compose CLI plugin, and skip
with the reason where either is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.compose)


def compose_cli_missing() -> str:
    """Why `docker compose` cannot run here ('' when it can); needs no daemon."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return "the docker CLI has no compose plugin (`docker compose version` failed)"
    return ""


def docker_daemon_missing() -> str:
    """Why no Docker daemon answers ('' when one does): the CLI alone proves nothing."""
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415

        client: Any = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:
        return f"no Docker daemon answers ({type(exc).__name__})"
    return ""
