"""Helpers for tests that run `jizhi worker` processes against the session's broker.

Every test gets its own pipeline name (so its own topics and consumer groups), and every worker
process writes its output to a log file the test can wait on ("assigned {...}" lines) and show
when an assertion fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jizhi.publish import PublishOptions, PublishResult, run_publish
from jizhi.synth import Workload, WorldSpec, ensure_world

WORLD = WorldSpec(users=500, items=20_000, dim=16, seed=7)
PARTITIONS = 4
WORLD_FLAGS = ("--users", str(WORLD.users), "--items", str(WORLD.items), "--dim", str(WORLD.dim))
"""The command-line flags that name `WORLD` to `jizhi worker` and `jizhi publish`."""

CONFIG = """
[pipeline]
batch_size = 64
batch_wait_ms = 2.0
{stages}
[kafka]
partitions = {partitions}
exactly_once = {exactly_once}

[kafka.extra]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"statistics.interval.ms" = 1000
"""

_ASSIGNED = re.compile(r"assigned (\{.*\})")


def free_port() -> int:
    """A loopback port nobody listens on right now (for a process's --metrics-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique_pipeline(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def world_root(base: Path) -> Path:
    root = base / "worlds"
    ensure_world(WORLD, root)
    return root


@dataclass
class WorkerProc:
    stages: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def assignments(self) -> list[dict[str, list[int]]]:
        out: list[dict[str, list[int]]] = []
        for m in _ASSIGNED.finditer(self.text()):
            out.append(eval(m.group(1), {"__builtins__": {}}))  # a printed dict of lists
        return out

    def wait_assigned(
        self,
        done: Callable[[dict[str, list[int]]], bool] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, list[int]]:
        """Until the worker's latest assignment satisfies ``done`` (default: every chain owns at
        least one partition)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            seen = self.assignments()
            if seen and (done(seen[-1]) if done is not None else all(seen[-1].values())):
                return seen[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.stages} exited:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(
            f"worker {self.stages} got no partitions in {timeout}s:\n{self.text()}"
        )

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Workers:
    bootstrap: str
    pipeline: str
    world_dir: Path
    tmp: Path
    exactly_once: bool = False
    stages: str = ""
    """A TOML array for ``[pipeline].stages`` (default: the built-in five)."""
    pipelines: str = ""
    """TOML appended to the config: ``[[pipelines]]`` tables."""
    procs: list[WorkerProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = self.tmp / f"{self.pipeline}.toml"
        self.config.write_text(
            CONFIG.format(
                partitions=PARTITIONS,
                exactly_once=str(self.exactly_once).lower(),
                stages=f"stages = {self.stages}\n" if self.stages else "",
            )
            + self.pipelines
        )

    def start(self, stages: str, *extra: str) -> WorkerProc:
        """A worker running ``stages``; several ``--stages`` values are separated by spaces."""
        tag = stages.replace(",", "-").replace(" ", "+").replace(":", "_")
        log = self.tmp / f"worker-{len(self.procs)}-{tag}.log"
        selected = [arg for s in stages.split() for arg in ("--stages", s)]
        cmd = [
            sys.executable,
            "-m",
            "jizhi.cli",
            "-v",
            "worker",
            *selected,
            "--bootstrap",
            self.bootstrap,
            "--pipeline",
            self.pipeline,
            "--config",
            str(self.config),
            "--metrics-port",
            "0",
            *WORLD_FLAGS,
            "--seed",
            str(WORLD.seed),
            "--world-dir",
            str(self.world_dir),
            *extra,
        ]
        env = {**os.environ, "JIZHI_HOME": str(self.tmp / "home"), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        wp = WorkerProc(stages, proc, log)
        self.procs.append(wp)
        return wp

    def logs(self) -> str:
        return "\n".join(
            f"--- {w.stages} (rc={w.proc.poll()})\n{w.text()[-3000:]}" for w in self.procs
        )

    def close(self) -> None:
        for w in self.procs:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(10)


def publish_argv(
    bootstrap: str,
    pipeline: str,
    requests: int,
    *,
    rate: float,
    timeout_ms: float = 60_000.0,
    answer_timeout_s: float = 60.0,
    warmup: int = 200,
) -> list[str]:
    """`jizhi publish` arguments (after ``jizhi``) for these workers' world: long deadlines, no
    timed warm-up (the short readiness gate is enough), no progress line."""
    return [
        "publish",
        "--bootstrap",
        bootstrap,
        "--pipeline",
        pipeline,
        "--requests",
        str(requests),
        "--rate",
        f"{rate:g}",
        "--timeout-ms",
        f"{timeout_ms:g}",
        "--warmup",
        str(warmup),
        "--warmup-s",
        "0",
        "--answer-timeout",
        f"{answer_timeout_s:g}",
        "--partitions",
        str(PARTITIONS),
        *WORLD_FLAGS,
        "--no-progress",
    ]


def workload(requests: int, *, timeout_ms: float = 60_000.0) -> Workload:
    """Long deadlines: these tests are about delivery, not speed, on a busy 2-core machine."""
    return Workload(requests=requests, timeout_ms=timeout_ms, seed=WORLD.seed)


def publish(
    bootstrap: str,
    pipeline: str,
    requests: int,
    rate: float,
    *,
    answer_timeout_s: float = 60.0,
    keep_responses: bool = False,
    timeout_ms: float = 60_000.0,
) -> PublishResult:
    return run_publish(
        PublishOptions(
            bootstrap=bootstrap,
            pipeline=pipeline,
            world=WORLD,
            workload=workload(requests, timeout_ms=timeout_ms),
            rate=rate,
            answer_timeout_s=answer_timeout_s,
            partitions=PARTITIONS,
            progress=False,
            keep_responses=keep_responses,
            warmup_s=0.0,  # tests check correctness; the short readiness gate is enough
        )
    )


class Background:
    """Run a function in a thread and fetch its result (or exception) later."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = fn()
        except BaseException as exc:
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("background call still running")
        if self._error is not None:
            raise self._error
        return self._result
