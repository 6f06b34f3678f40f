"""Where things live: the jizhi home, a state folder, each node's folder, the jar cache."""

from __future__ import annotations

from pathlib import Path

from jizhi.config import jizhi_home

__all__ = ["jizhi_home", "libs_dir", "node_dir", "resolve_state_dir"]


def resolve_state_dir(state_dir: Path | str | None) -> Path:
    """A caller may pass its own folder so that several clusters (e.g. a test's) can coexist."""
    return Path(state_dir) if state_dir is not None else jizhi_home() / "local"


def libs_dir(version: str) -> Path:
    return jizhi_home() / "kafka" / version / "libs"


def node_dir(sdir: Path, node_id: int) -> Path:
    return sdir / f"node-{node_id}"
