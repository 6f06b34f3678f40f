"""The local actuator: one `jizhi worker` process per consumer, on this machine.

Each consumer is a process started from a command template (by default ``jizhi worker
--stages <stage> ...``) with its own metrics port and a stable ``--instance`` name per slot, so a
restarted slot takes its partitions back at once (static membership). Stopping sends SIGTERM: the
worker stops fetching, finishes in-flight batches, flushes, commits and leaves the group, so a
scale-down loses nothing; a worker that outlives ``stop_timeout`` is killed (its uncommitted
events are redone by the next owner: at-least-once).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from allocator.errors import ActuatorError

Command = Callable[[str, int, int], Sequence[str]]
"""(stage, slot, metrics port) -> argv of one consumer process."""


def jizhi_worker(
    *,
    bootstrap: str,
    pipeline: str,
    config: Path | None = None,
    extra: Sequence[str] = (),
    static: bool = False,
) -> Command:
    """The default command: ``python -m jizhi.cli worker`` for one stage.

    Workers are dynamic group members unless ``static``: a static member (``--instance``) keeps
    its partitions until ``session.timeout.ms`` after it stops, which stalls them after every
    scale-down (measured on the wave test: lag 31 -> 221 after 3 -> 2 consumers). Static names
    are for workers that follow assignment plans, which name instances.
    """

    def build(stage: str, slot: int, port: int) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "jizhi.cli",
            "worker",
            "--stages",
            stage,
            "--bootstrap",
            bootstrap,
            "--pipeline",
            pipeline,
            "--metrics-port",
            str(port),
        ]
        if static:
            argv += ["--instance", instance_name(pipeline, stage, slot)]
        if config is not None:
            argv += ["--config", str(config)]
        return [*argv, *extra]

    return build


def instance_name(pipeline: str, stage: str, slot: int) -> str:
    """The ``--instance`` of a static worker: stable per slot, so a restarted slot is the same
    member and the same name in assignment plans."""
    return f"{pipeline}-{stage}-{slot}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class _Proc:
    stage: str
    slot: int
    port: int
    popen: subprocess.Popen[bytes]
    stopping_since: float | None = None


class LocalActuator:
    def __init__(
        self,
        command: Command,
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        stop_timeout: float = 30.0,
        names: Callable[[str, int], str] | None = None,
    ) -> None:
        """``names``: (stage, slot) -> the ``--instance`` the command gives that slot, when the
        workers are static members (needed for assignment plans)."""
        self._names = names
        self._command = command
        self._log_dir = log_dir
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._stop_timeout = stop_timeout
        self._procs: list[_Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def _reap(self) -> None:
        now = time.monotonic()
        keep = []
        for p in self._procs:
            if p.popen.poll() is not None:
                continue
            if p.stopping_since is not None and now - p.stopping_since > self._stop_timeout:
                p.popen.send_signal(signal.SIGKILL)
                p.popen.wait(5)
                continue
            keep.append(p)
        self._procs = keep

    def _running(self, stage: str) -> list[_Proc]:
        return [p for p in self._procs if p.stage == stage and p.stopping_since is None]

    def actual(self, stage: str) -> int:
        self._reap()
        return len(self._running(stage))

    def scale(self, stage: str, consumers: int) -> None:
        self._reap()
        running = self._running(stage)
        busy_slots = {p.slot for p in self._procs if p.stage == stage}
        while len(running) < consumers:
            slot = next(i for i in range(len(busy_slots) + 1) if i not in busy_slots)
            busy_slots.add(slot)
            running.append(self._start(stage, slot))
        for p in sorted(running, key=lambda q: q.slot)[consumers:]:
            p.popen.send_signal(signal.SIGTERM)  # drains, commits, leaves
            p.stopping_since = time.monotonic()

    def _start(self, stage: str, slot: int) -> _Proc:
        port = free_port()
        argv = list(self._command(stage, slot, port))
        log = self._log_dir / f"{stage}-{slot}.log"
        try:
            with log.open("ab") as fh:
                popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self._env)
        except OSError as exc:
            raise ActuatorError(
                f"cannot start a consumer of {stage} ({argv[0]}): {exc}", retriable=False
            ) from exc
        proc = _Proc(stage, slot, port, popen)
        self._procs.append(proc)
        return proc

    def endpoints(self) -> list[str]:
        self._reap()
        return [f"http://127.0.0.1:{p.port}/metrics" for p in self._procs]

    def instances(self, stage: str) -> list[str]:
        """Names of the running consumers of ``stage`` (empty unless they are static members)."""
        self._reap()
        if self._names is None:
            return []
        return [self._names(p.stage, p.slot) for p in self._running(stage)]

    def pids(self, stage: str) -> list[int]:
        return [p.popen.pid for p in self._running(stage)]

    def close(self, timeout: float = 30.0) -> None:
        """Stop every consumer this actuator started (drain first, then kill)."""
        for p in self._procs:
            if p.popen.poll() is None and p.stopping_since is None:
                p.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for p in self._procs:
            try:
                p.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.send_signal(signal.SIGKILL)
                p.popen.wait(5)
        self._procs = []
