"""Two services under one core budget on a real broker: `jizhi allocator --budget 5`.

Both services are ``["ingest", work]``, where work is a user's stage of known cost
(`_slow_stage.Slow`: 10 ms per event, sleeping, so one consumer completes ~100 events/s whatever
the cores). Each is offered 120 req/s: each needs ingest 1 + work ceil(120 / (100 x 0.75)) = 2,
so 6 consumers together, and the budget is 5. The allocator (the real CLI: one process, a
`Fleet` of two reconcilers, `LocalActuator` starting `jizhi worker` processes) must give "hi"
(priority 10) its 3 and "lo" (priority 1) the 2 left, and limit lo's admission to what its one
work consumer completes (~75 req/s), published on lo's control topic, where lo's ingest sheds.

Asserted: hi answers almost everything ``ok`` within its deadline and sheds nothing; lo sheds
(``shed`` answers) and its published admission was below its offered rate; the consumers granted
never exceed the budget; and nothing is lost: every request of both is answered.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from jizhi.publish import PublishResult
from tests.integration.workerkit import PARTITIONS, Background, free_port, publish, unique_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUDGET = 5
RATE = 120.0
SECONDS = 40.0
DEADLINE_MS = 5_000.0

CONFIG = """
[pipeline]
batch_size = 16
batch_wait_ms = 2.0
default_timeout_ms = {deadline}
stages = ["ingest", {{ use = "tests.integration._slow_stage:Slow", params = {{ event_ms = 10 }} }}]

[[pipelines]]
name = "{lo}"
priority = 1

[[pipelines]]
name = "{hi}"
priority = 10

[kafka]
partitions = {partitions}

[kafka.extra]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"""

ALLOCATOR = """
interval_s = 2.0
assignment = false
history = false
[scaling]
target_utilisation = 0.75
drain_s = 10.0
down_cooldown_s = 10.0
down_window_s = 10.0
lookahead_s = 3.0
"""

_SAMPLE = re.compile(r"^(jizhi_allocator_\w+)\{(.*)\} (\S+)$")


class Gauges:
    """Samples the allocator's own /metrics every half second: grants and admission rates."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[float, dict[tuple[str, str], float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            got: dict[tuple[str, str], float] = {}
            for line in text.splitlines():
                m = _SAMPLE.match(line)
                if m:
                    got[(m.group(1), m.group(2))] = float(m.group(3))
            self.samples.append((time.monotonic() - self._t0, got))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def series(self, name: str, pipeline: str) -> list[tuple[float, float]]:
        out = []
        for t, got in self.samples:
            v = [x for (n, labels), x in got.items() if n == name and f'"{pipeline}"' in labels]
            if v:
                out.append((t, sum(v)))
        return out


def _labels(pipeline: str, stage: str) -> str:
    return f'pipeline="{pipeline}",stage="{stage}"'


def in_time(result: PublishResult) -> tuple[int, Counter[str]]:
    """(answers ``ok`` within the deadline, answers by status) of the measured requests."""
    mine = [r for r in result.tally.responses if r.request_id.startswith(result.prefix + "-")]
    ok = sum(1 for r in mine if r.status == "ok" and r.latency_ms <= DEADLINE_MS)
    return ok, Counter(r.status for r in mine)


def test_a_short_budget_keeps_the_high_priority_service_and_sheds_the_low_one(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    hi, lo = unique_pipeline("hi"), unique_pipeline("lo")
    config = tmp_path / "jizhi.toml"
    config.write_text(CONFIG.format(deadline=DEADLINE_MS, lo=lo, hi=hi, partitions=PARTITIONS))
    knobs = tmp_path / "allocator.toml"
    knobs.write_text(ALLOCATOR)
    port = free_port()
    home = tmp_path / "home"
    log = tmp_path / "allocator.log"
    cmd = [
        sys.executable,
        "-m",
        "jizhi.cli",
        "allocator",
        "--bootstrap",
        kafka_bootstrap,
        "--config",
        str(config),
        "--allocator-config",
        str(knobs),
        "--budget",
        str(BUDGET),
        "--metrics-port",
        str(port),
    ]
    env = {**os.environ, "JIZHI_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with log.open("wb") as fh:
        allocator = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    gauges = Gauges(port)
    requests = int(RATE * SECONDS)
    try:
        runs = {
            name: Background(
                lambda name=name: publish(  # type: ignore[misc]
                    kafka_bootstrap,
                    name,
                    requests,
                    RATE,
                    keep_responses=True,
                    timeout_ms=DEADLINE_MS,
                    answer_timeout_s=90.0,
                )
            )
            for name in (hi, lo)
        }
        end = time.monotonic() + 240
        while not all(r.done() for r in runs.values()) and time.monotonic() < end:
            # An allocator that died starts no workers: say so now, not after the warm-up's wait.
            assert allocator.poll() is None, (
                f"the allocator exited with {allocator.returncode}\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.5)
        results: dict[str, PublishResult] = {n: r.result(1) for n, r in runs.items()}
    finally:
        allocator.send_signal(signal.SIGTERM)  # it stops its workers: drain, commit, leave
        try:
            allocator.wait(60)
        except subprocess.TimeoutExpired:
            allocator.kill()
            allocator.wait(10)
        gauges.stop()
    wall = time.monotonic() - t0
    text = log.read_text(errors="replace")

    # -- the figures ---------------------------------------------------------------------------
    print(
        f"\nbudget {BUDGET} consumers; {hi} (priority 10) and {lo} (priority 1), {RATE:.0f} req/s"
    )
    print(f"each for {SECONDS:.0f} s; wall {wall:.1f} s; logs in {tmp_path}")
    figures = {}
    for name in (hi, lo):
        s = results[name].summary
        ok, statuses = in_time(results[name])
        figures[name] = (ok, statuses)
        splits = Counter(
            tuple(
                int(got.get(("jizhi_allocator_granted_consumers", _labels(name, st)), 0))
                for st in ("ingest", "work")
            )
            for _, got in gauges.samples
        )
        admission = [v for _, v in gauges.series("jizhi_allocator_admission_rate", name)]
        limited = [v for v in admission if v > 0]
        print(
            f"{name}: answered {s['answered']}/{requests}, ok in time {ok / requests:.2%}, "
            f"by status {dict(statuses)}, p99 {s['latency_ms']['p99']} ms, "
            f"duplicates {s['duplicates']}; (ingest, work) granted: samples "
            f"{dict(splits.most_common())}; admission limits "
            + (f"{min(limited):.3g}-{max(limited):.3g} req/s" if limited else "none")
        )
    totals = [
        sum(x for (n, _), x in got.items() if n == "jizhi_allocator_granted_consumers")
        for _, got in gauges.samples
    ]
    print(f"consumers granted together: max {max(totals, default=0):.0f} (budget {BUDGET})")
    looks = [line for line in text.splitlines() if line.startswith("allocator: [")]
    print("\n".join(looks[-6:]))

    assert allocator.returncode == 0, text[-4000:]
    assert gauges.samples, f"the allocator's metrics were never read\n{text[-4000:]}"
    assert max(totals) <= BUDGET
    for name in (hi, lo):  # nothing lost: every request answered
        s = results[name].summary
        assert (s["answered"], s["unanswered"]) == (requests, 0), f"{name}: {s}\n{text[-3000:]}"
    ok_hi, by_hi = figures[hi]
    assert ok_hi >= 0.95 * requests, f"hi kept its deadline for only {ok_hi}/{requests}"
    # ingest may shed a few while hi's first workers start on a fresh broker (68 of 4,800 once)
    assert by_hi["shed"] <= 0.02 * requests
    _, by_lo = figures[lo]
    assert by_lo["shed"] >= 0.1 * requests, f"lo shed only {by_lo['shed']}"
    lo_limits = [v for _, v in gauges.series("jizhi_allocator_admission_rate", lo) if v > 0]
    assert lo_limits and min(lo_limits) < RATE  # 0.001 while only its edge ran: "none"
    hi_limits = [v for _, v in gauges.series("jizhi_allocator_admission_rate", hi) if v > 0]
    assert not hi_limits, f"hi was limited to {hi_limits}"
    assert "budget=short" in text or "budget=edge_only" in text
