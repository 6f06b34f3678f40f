"""Broker processes as the OS sees them: pid files, liveness, signals, and the tail of a log."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from jizhi.local.paths import node_dir


def read_pid(sdir: Path, node_id: int) -> int | None:
    try:
        return int((node_dir(sdir, node_id) / "broker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int | None, config: Path) -> bool:
    """Checks the command line too: after a reboot the recorded pid may belong to anything."""
    if pid is None:
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    # A killed broker whose parent (often PID 1 in a container) does not reap it stays a zombie.
    return state not in ("Z", "X") and str(config).encode() in cmdline


def wait_dead(pid: int, config: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid, config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    ({path} not written)"
    return "\n".join("    " + line for line in text[-lines:]) or f"    ({path} is empty)"
