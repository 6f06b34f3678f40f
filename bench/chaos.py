"""The chaos loop: steady traffic through a replicated pipeline while seeded kill -9s hit every
kind of process it runs on, then a count of what was lost and what was answered twice.

    python -m bench.chaos --seconds 600 [--rate 100] [--seed 11] [--at-least-once]
                          [--state-dir DIR]   # a running `jizhi local up --brokers 3` to reuse

Three brokers (replication 3, min.insync.replicas 2, as `jizhi local up --brokers 3` configures
them); ``ingest,features`` and ``score,rank`` workers restarted by this driver as a supervisor
would; ``embed`` workers started by `jizhi allocator`, which must replace one killed under it and,
killed itself and restarted, must take over again (the restarted allocator's worker reuses the
static instance name, which fences the orphan it left). The faults come from a seeded shuffle
of every kind, so a failing run can be replayed; each kind is hit at least once per round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from bench.brokers import ThreeBrokers
from bench.procs import Proc, alive, bench_env, children, jizhi, world_args
from bench.traffic import WORLD, Traffic, TrafficOptions, TrafficReport
from jizhi import local

Fault = Literal[
    "worker:ingest,features",
    "worker:embed",
    "worker:score,rank",
    "allocator",
    "broker:controller",
    "broker:leader",
]
FAULTS: tuple[Fault, ...] = get_args(Fault)
PARTITIONS = 4
_OVERTIME = 3
"""Traffic goes on past ``seconds`` (up to this factor) until every kind of fault was injected
at least once: on a loaded machine one broker restart alone can take half a minute."""

_CONFIG = """
[pipeline]
batch_size = 64
batch_wait_ms = 2.0

[kafka]
partitions = {partitions}
replication = 3
exactly_once = {exactly_once}

[kafka.extra]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"""

_ALLOCATOR = """
stages = ["embed"]
interval_s = 2.0
history = false
shedding = false
log_dir = "{log_dir}"
worker_args = {worker_args}

[scaling]
min_consumers = 1
max_consumers = 1
"""


@dataclass(frozen=True, kw_only=True)
class ChaosOptions:
    seconds: float = 60.0
    rate: float = 100.0
    seed: int = 11
    exactly_once: bool = True
    faults: tuple[Fault, ...] = FAULTS
    first_fault_s: float = 5.0
    worker_down_s: float = 1.0
    """How long a supervisor takes to notice a dead worker and start it again."""
    broker_down_s: float = 5.0
    answer_timeout_s: float = 120.0
    workdir: Path | None = None
    state_dir: Path | None = None
    """A running three-node cluster to use; None: one is started (and stopped) in ``workdir``."""


@dataclass
class Injected:
    kind: Fault
    at_s: float
    target: str = ""
    recovered_s: float | None = None
    """Until the killed part serves again: a worker assigned partitions, a broker back in every
    ISR, a restarted allocator's worker assigned."""
    leaders_s: float | None = None
    """Brokers only: until every partition had a live leader again."""
    rejoined_s: float | None = None
    """Brokers only: until the restarted node was listed by the cluster again."""
    drained_s: float | None = None
    """Until every request sent before the kill was answered."""
    error: str | None = None


@dataclass
class ChaosResult:
    options: dict[str, Any]
    traffic: dict[str, Any]
    faults: list[Injected] = field(default_factory=list)
    self_exits: list[str] = field(default_factory=list)
    """Processes that died without being killed (a supervisor started them again)."""
    orphans_left: int = 0
    """Workers of a killed allocator still running at the end (they should have been fenced)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "traffic": self.traffic,
            "faults": [asdict(f) for f in self.faults],
            "self_exits": self.self_exits,
            "orphans_left": self.orphans_left,
        }


_DRAINING = re.compile(r"jizhi worker (\d+): draining")


def _last_error(log: Path) -> str:
    """The error line a process printed last, for the report."""
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.startswith("error:")]
    return lines[-1][:160] if lines else "(no error line)"


def _assigned_since(log: Path, pid: int, offset: int) -> bool:
    """Whether worker ``pid`` logged a non-empty assignment after byte ``offset`` of ``log``."""
    if not log.exists():
        return False
    with log.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    tag = f"jizhi worker {pid}: assigned "
    return any(
        line.startswith(tag) and "[" in line and "[]" not in line for line in text.splitlines()
    )


def _wait(check: Any, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


class Chaos:
    def __init__(self, opts: ChaosOptions, cluster: ThreeBrokers, workdir: Path) -> None:
        self.o, self.cluster, self.dir = opts, cluster, workdir
        self.pipeline = f"chaos-{opts.seed}-{os.getpid()}"
        self.env = bench_env(workdir)
        self.world_args = world_args(WORLD, workdir / "worlds")
        self.config = workdir / "jizhi.toml"
        self.config.write_text(
            _CONFIG.format(partitions=PARTITIONS, exactly_once=str(opts.exactly_once).lower())
        )
        self.alloc_logs = workdir / "allocator-logs"
        alloc_config = workdir / "allocator.toml"
        alloc_config.write_text(
            _ALLOCATOR.format(log_dir=self.alloc_logs, worker_args=json.dumps(self.world_args))
        )
        self.workers: dict[str, Proc] = {}
        common = ["--config", str(self.config), "--metrics-port", "0"]
        for stages, instance in (("ingest,features", "if"), ("score,rank", "sr")):
            self.workers[stages] = Proc(
                stages,
                jizhi(
                    "worker",
                    cluster.bootstrap,
                    *("--pipeline", self.pipeline),
                    *("--stages", stages, "--instance", f"chaos-{instance}"),
                    *common,
                    *self.world_args,
                ),
                workdir / f"worker-{instance}.log",
                self.env,
            )
        self.allocator = Proc(
            "allocator",
            jizhi(
                "allocator",
                cluster.bootstrap,
                *("--pipeline", self.pipeline, "--allocator-config", str(alloc_config)),
                *common,
            ),
            workdir / "allocator.log",
            self.env,
        )
        self.orphans: list[int] = []
        self.self_exits: list[str] = []
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self.started = time.monotonic()

    @property
    def embed_log(self) -> Path:
        return self.alloc_logs / "embed-0.log"

    def embed_pids(self) -> list[int]:
        return children(self.allocator.popen.pid) if self.allocator.popen.poll() is None else []

    def supervise(self) -> None:
        """Starts again whatever died by itself, as systemd or Kubernetes would, and says so."""
        with self._lock:
            busy = set(self._busy)
        for proc in [*self.workers.values(), self.allocator]:
            if proc.name not in busy and proc.popen.poll() is not None:
                self.self_exits.append(
                    f"{proc.name} rc={proc.popen.returncode} at "
                    f"{time.monotonic() - self.started:.1f} s: {_last_error(proc.log)}"
                )
                proc.restart()

    # -- faults ---------------------------------------------------------------------------

    def busy(self, kind: Fault) -> bool:
        """Whether a fault on the same part is still recovering: a second kill there would
        measure nothing new, and a second broker down would stall acks=all by design."""
        with self._lock:
            return _part(kind) in self._busy

    def launch(self, fault: Injected) -> threading.Thread:
        """Injects ``fault`` in a thread of its own, so faults overlap as they would in life
        (a broker still catching up while a worker dies) and the schedule keeps its pace."""
        with self._lock:
            self._busy.add(_part(fault.kind))
        thread = threading.Thread(target=self._inject, args=(fault,), daemon=True)
        thread.start()
        return thread

    def _inject(self, fault: Injected) -> None:
        try:
            if fault.kind == "worker:embed":
                self._kill_allocated(fault)
            elif fault.kind == "allocator":
                self._kill_allocator(fault)
            elif fault.kind.startswith("worker:"):
                self._kill_worker(self.workers[fault.kind.split(":", 1)[1]], fault)
            else:
                self._kill_broker(fault)
        except Exception as exc:  # the run goes on; the report says what went wrong
            fault.error = repr(exc)
        finally:
            with self._lock:
                self._busy.discard(_part(fault.kind))

    def _kill_worker(self, proc: Proc, fault: Injected) -> None:
        fault.target = f"pid {proc.popen.pid}"
        t0 = time.monotonic()
        proc.kill()
        time.sleep(self.o.worker_down_s)
        offset = proc.log.stat().st_size
        proc.restart()
        pid = proc.popen.pid
        if _wait(lambda: _assigned_since(proc.log, pid, offset), 90.0) is not None:
            fault.recovered_s = time.monotonic() - t0

    def _kill_allocated(self, fault: Injected) -> None:
        """Kills the allocator's embed worker; the allocator must notice and replace it."""
        before = self.embed_pids()
        fault.target = f"pids {before}"
        offset = self.embed_log.stat().st_size if self.embed_log.exists() else 0
        t0 = time.monotonic()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        self._await_new_embed(fault, before, offset, t0)

    def _kill_allocator(self, fault: Injected) -> None:
        """The allocator's workers outlive it (kill -9 reaches one process); the restarted one
        starts its own under the same static names, which must fence the orphans."""
        orphans = self.embed_pids()
        fault.target = f"pid {self.allocator.popen.pid}, orphans {orphans}"
        self.orphans.extend(orphans)
        offset = self.embed_log.stat().st_size if self.embed_log.exists() else 0
        t0 = time.monotonic()
        self.allocator.kill()
        time.sleep(self.o.worker_down_s)
        self.allocator.restart()
        self._await_new_embed(fault, orphans, offset, t0)

    def _await_new_embed(self, fault: Injected, old: list[int], offset: int, t0: float) -> None:
        """Until a worker of the allocator's, not one of ``old``, logs partitions assigned."""

        def replaced() -> bool:
            return any(
                p not in old and _assigned_since(self.embed_log, p, offset)
                for p in self.embed_pids()
            )

        if _wait(replaced, 90.0) is not None:
            fault.recovered_s = time.monotonic() - t0

    def _kill_broker(self, fault: Injected) -> None:
        controller = self.cluster.controller()
        if fault.kind == "broker:controller":
            victim = controller
        else:
            # A leader of the requests topic that is not the controller, so the two kinds of
            # broker fault test different roles whenever the cluster allows it.
            leaders = set(self.cluster.leaders(f"jizhi.{self.pipeline}.requests").values())
            victim = min(leaders - {controller} or leaders)
        fault.target = f"node {victim} (controller {controller})"
        t0 = time.monotonic()
        self.cluster.kill(victim)
        fault.leaders_s = self.cluster.wait_leaders(60.0)
        time.sleep(max(0.0, self.o.broker_down_s - (time.monotonic() - t0)))
        self.cluster.start(victim)
        fault.rejoined_s = time.monotonic() - t0
        if self.cluster.wait_full_isr(180.0) is not None:
            fault.recovered_s = time.monotonic() - t0

    def allocated_exits(self) -> list[str]:
        """The allocator's workers that stopped on an error, except the orphans a restarted
        allocator fenced on purpose (the allocator itself starts a replacement)."""
        if not self.embed_log.exists():
            return []
        out, pid = [], 0
        for line in self.embed_log.read_text(errors="replace").splitlines():
            m = _DRAINING.match(line)
            if m:
                pid = int(m.group(1))
            elif line.startswith("error: ") and pid not in self.orphans:
                out.append(f"embed (allocator's) pid {pid}: {line[7:][:160]}")
        return out

    def close(self) -> int:
        """Stops everything; returns how many orphaned workers were still running."""
        self.allocator.stop()
        for proc in self.workers.values():
            proc.stop()
        left = [pid for pid in self.orphans if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return len(left)


def _part(kind: Fault) -> str:
    """The process a fault of ``kind`` kills and restarts (one allocator runs the embed
    workers; one broker at a time may be down)."""
    if kind in ("worker:embed", "allocator"):
        return "allocator"
    return kind.split(":", 1)[1] if kind.startswith("worker:") else "broker"


def schedule(opts: ChaosOptions) -> list[Fault]:
    """Seeded rounds, each a shuffle of every kind: long runs keep hitting all of them, and the
    same seed replays the same order. Broker faults open a round and sit half a round apart:
    one broker's restart and catch-up takes longest, and the next may only start after it."""
    rng = random.Random(opts.seed)
    rounds = max(1, int(opts.seconds // 60))
    out: list[Fault] = []
    for _ in range(rounds):
        brokers = [k for k in opts.faults if k.startswith("broker:")]
        others = [k for k in opts.faults if not k.startswith("broker:")]
        rng.shuffle(brokers)
        rng.shuffle(others)
        kinds: list[Fault] = []
        gap = max(1, len(opts.faults) // max(1, len(brokers)))
        while brokers or others:
            if brokers and len(kinds) % gap == 0:
                kinds.append(brokers.pop())
            elif others:
                kinds.append(others.pop())
            else:
                kinds.append(brokers.pop())
        out += kinds
    return out


def run_chaos(opts: ChaosOptions, out: Any = sys.stderr) -> ChaosResult:
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="jizhi-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = opts.state_dir
    started = state_dir is None
    if state_dir is None:
        state_dir = workdir / "cluster"
        print(f"chaos: starting three brokers in {state_dir}", file=out, flush=True)
        local.up(3, state_dir=state_dir, first_port=None)
    try:
        return _run(opts, ThreeBrokers(state_dir), workdir, out)
    finally:
        if started:
            local.down(state_dir=state_dir, timeout=15)


def _run(opts: ChaosOptions, cluster: ThreeBrokers, workdir: Path, out: Any) -> ChaosResult:
    chaos = Chaos(opts, cluster, workdir)
    traffic = Traffic(
        TrafficOptions(
            bootstrap=cluster.bootstrap,
            pipeline=chaos.pipeline,
            rate=opts.rate,
            seconds=opts.seconds * _OVERTIME,
            partitions=PARTITIONS,
            replication=3,
        )
    )
    faults: list[Injected] = []
    try:
        traffic.ready()
        print(f"chaos: pipeline {chaos.pipeline} ready; logs in {workdir}", file=out, flush=True)
        plan = schedule(opts)
        every = max(1.0, (opts.seconds - opts.first_fault_s) / len(plan))
        start = chaos.started = time.monotonic()
        traffic.start()
        next_at = opts.first_fault_s
        threads: list[threading.Thread] = []
        while traffic.sending():
            chaos.supervise()
            now = time.monotonic() - start
            if now >= opts.seconds and {f.kind for f in faults} >= set(opts.faults):
                traffic.stop()
                break
            ready = [k for k in plan if not chaos.busy(k)]
            if now < next_at or not ready:
                time.sleep(0.2)
                continue
            plan.remove(ready[0])
            fault = Injected(ready[0], now)
            faults.append(fault)
            threads.append(chaos.launch(fault))
            print(f"chaos: {now:5.1f} s  {fault.kind}", file=out, flush=True)
            next_at += every
        for thread in threads:
            thread.join(180.0)
        report: TrafficReport = traffic.finish(opts.answer_timeout_s, tick=chaos.supervise)
    finally:
        orphans = chaos.close()
    for fault in faults:
        fault.drained_s = report.drained_after(start + fault.at_s)
    return ChaosResult(
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        traffic=report.summary(),
        faults=faults,
        self_exits=[*chaos.self_exits, *chaos.allocated_exits()],
        orphans_left=orphans,
    )


def format_result(result: ChaosResult) -> str:
    t = result.traffic
    lines = [
        f"published {t['published']:,}  answered {t['answered']:,}  lost {t['lost']:,}  "
        f"duplicated {t['duplicated']:,}  dead-lettered {t['dead_lettered']:,}  "
        f"status {t['status']}",
        f"{'at s':>6}  {'fault':<23} {'target':<34} {'leaders':>7} {'rejoined':>8} "
        f"{'recovered':>9} {'drained':>7}  (seconds after the kill)",
    ]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    for f in result.faults:
        lines.append(
            f"{f.at_s:>6.1f}  {f.kind:<23} {f.target[:34]:<34} {num(f.leaders_s):>7} "
            f"{num(f.rejoined_s):>8} {num(f.recovered_s):>9} {num(f.drained_s):>7}"
            + (f"  error: {f.error}" if f.error else "")
        )
    lines.append(f"self-exits: {result.self_exits or 'none'}; orphans left: {result.orphans_left}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="traffic duration (60)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s (100)")
    p.add_argument("--seed", type=int, default=11, help="seed of the fault order (11)")
    p.add_argument("--at-least-once", action="store_true", help="workers without transactions")
    p.add_argument("--state-dir", type=Path, default=None, help="a running 3-broker cluster")
    p.add_argument("--workdir", type=Path, default=None, help="logs and data (a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run_chaos(
        ChaosOptions(
            seconds=args.seconds,
            rate=args.rate,
            seed=args.seed,
            exactly_once=not args.at_least_once,
            workdir=args.workdir,
            state_dir=args.state_dir,
        )
    )
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    t = result.traffic
    return 1 if t["lost"] or (t["duplicated"] and not args.at_least_once) else 0


if __name__ == "__main__":
    sys.exit(main())
