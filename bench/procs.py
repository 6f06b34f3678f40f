"""Processes the long-running benches start, kill and restart: `jizhi` commands with their
output in log files, and what /proc says about them (children, liveness, memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from jizhi.synth import WorldSpec, ensure_world


def world_args(world: WorldSpec, root: Path) -> list[str]:
    """Flags that point a worker at ``world`` generated once under ``root``."""
    ensure_world(world, root)
    return [
        *("--users", str(world.users), "--items", str(world.items), "--dim", str(world.dim)),
        *("--seed", str(world.seed), "--world-dir", str(root)),
    ]


def jizhi(command: str, bootstrap: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "jizhi.cli", "-v", command, "--bootstrap", bootstrap, *args]


def bench_env(workdir: Path) -> dict[str, str]:
    """A JIZHI_HOME of the run's own, so nothing it starts reads or writes the user's."""
    return {**os.environ, "JIZHI_HOME": str(workdir / "home"), "PYTHONUNBUFFERED": "1"}


class Proc:
    """A process the bench supervises: started again on the same command after a kill."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as fh:
            return subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env)

    def restart(self) -> None:
        self.popen = self._spawn()

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first, then ppid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live children of ``pid``: the allocator's workers are its processes, not ours."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def rss_mib(pid: int) -> float | None:
    """Resident memory of a live process (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None
