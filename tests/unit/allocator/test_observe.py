"""What the allocator's observation maths may depend on, and that it reads the names the workers
really export."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from allocator.observe import parse_metrics
from stages import metrics

REPO = Path(__file__).resolve().parents[3]

# Blocks confluent_kafka the way an environment without it would fail (ImportError), then checks
# the block works: the Kafka observer must not import, or the first import proved nothing.
_WITHOUT_KAFKA = """
import sys
sys.modules["confluent_kafka"] = None
import allocator.observe, allocator.simulator
try:
    import allocator.observe_kafka
except ImportError:
    print("blocked")
"""


def test_rate_maths_import_without_confluent_kafka() -> None:
    """The simulator and the rate maths replay numbers: they must run where no Kafka client is
    installed (a laptop sizing a pipeline from a recorded day)."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_KAFKA],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked", done.stdout


def test_parse_metrics_reads_what_the_stages_export() -> None:
    """The real metric objects, exposed as a worker exposes them: a renamed metric, or a counter
    whose ``_total`` the scrape forgot, reads as zero here instead of silently in production."""
    p = f"names-{uuid.uuid4().hex[:8]}"  # a pipeline of its own in the process-wide registry
    metrics.PROCESSING.labels(p, "score").observe(0.25)
    metrics.BATCH_SIZE.labels(p, "score").observe(64)
    metrics.RESPONSES.labels(p, "ok").inc(5)
    metrics.RESPONSES.labels(p, "shed").inc(3)
    metrics.RESPONSES.labels(p, "expired").inc(2)
    metrics.REQUEST_LATENCY.labels(p, "ok").observe_many([0.004, 0.004, 0.04])

    s = parse_metrics(generate_latest(REGISTRY).decode(), pipeline=p, at=1.0)

    assert s.busy_s == {"score": 0.25}
    assert s.batches == {"score": 1.0}
    assert s.events == {"score": 64.0}
    assert (s.answered, s.shed, s.expired) == (10.0, 3.0, 2.0)
    assert dict(s.latency_buckets)[0.005] == 2.0
    assert dict(s.latency_buckets)[float("inf")] == 3.0
