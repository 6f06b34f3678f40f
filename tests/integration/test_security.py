"""A broker that speaks only SASL_SSL (SCRAM-SHA-512 over TLS), as `jizhi local up --security
sasl_ssl` starts it: certificates and passwords made now, on ports of its own and under a
JIZHI_HOME of its own, so the session's plaintext broker is never touched.

A worker and a publisher make a round trip through it with the password from a file; a wrong
password and a plaintext client each fail within seconds with one ``error:`` line that says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jizhi import local
from jizhi.config import load_settings
from jizhi.local.security import client_toml, password_file
from tests.integration.workerkit import CONFIG, PARTITIONS, Workers, publish_argv, unique_pipeline

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Secured:
    bootstrap: str
    home: Path
    client_toml: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """The jars come from the shared cache (Maven runs once per machine); the state, the
    certificates and the passwords live under this test's own home."""
    home = tmp_path_factory.mktemp("secure-home")
    sdir = home / "local"
    try:
        cluster = local.up(1, security="sasl_ssl", first_port=None, state_dir=sdir, timeout=90)
        assert cluster.bootstrap is not None
        assert not cluster.bootstrap.endswith(":9092")
        yield Secured(cluster.bootstrap, home, client_toml(sdir))
    finally:
        local.down(state_dir=sdir, timeout=10)


def _config(secured: Secured, tmp: Path, pipeline: str) -> Path:
    """The worker tests' config with the local cluster's [kafka] security settings in it."""
    kafka = secured.client_toml.read_text().split("[kafka]\n", 1)[1]
    text = CONFIG.format(stages="", partitions=PARTITIONS, exactly_once="false")
    path = tmp / f"{pipeline}.toml"
    path.write_text(text.replace("[kafka]\n", "[kafka]\n" + kafka, 1))
    return path


def _jizhi(*args: str, env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jizhi.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - t0


def _publish_args(bootstrap: str, pipeline: str, requests: int) -> list[str]:
    return publish_argv(
        bootstrap, pipeline, requests, rate=100, timeout_ms=30_000, answer_timeout_s=30, warmup=10
    )


def test_a_worker_and_a_publisher_round_trip_over_sasl_ssl(
    secured: Secured, world_dir: Path, tmp_path: Path
) -> None:
    pipeline = unique_pipeline("sec")
    w = Workers(secured.bootstrap, pipeline, world_dir, tmp_path)
    w.config = _config(secured, tmp_path, pipeline)
    assert load_settings(w.config).kafka.protocol == "sasl_ssl"
    try:
        proc = w.start("all")
        proc.wait_assigned(timeout=60)
        args = [*_publish_args(secured.bootstrap, pipeline, 200), "--config", str(w.config)]
        code, err, _ = _jizhi(*args, env={}, timeout=90)
        assert code == 0, f"{err}\n{w.logs()}"
        assert "duplicates 0  unanswered 0" in err, err
        assert proc.terminate() == 0, w.logs()
    finally:
        w.close()
    # The password was read from its file: it appears in no argument and no output.
    secret = password_file(secured.home / "local").read_text().strip()
    assert secret not in w.logs() and secret not in err


def test_a_wrong_password_fails_fast_with_one_error_line(secured: Secured, tmp_path: Path) -> None:
    config = _config(secured, tmp_path, "wrong")
    args = [*_publish_args(secured.bootstrap, "wrong", 1), "--config", str(config)]
    code, err, took = _jizhi(*args, env={"JIZHI_KAFKA_SASL_PASSWORD": "not-it"}, timeout=60)
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: Kafka at "), err
    assert "Authentication failed" in lines[0] and "JIZHI_KAFKA_SASL_PASSWORD" in lines[0], err
    assert took < 20, f"{took:.1f} s"


def test_a_plaintext_client_is_refused_with_one_error_line(secured: Secured) -> None:
    args = _publish_args(secured.bootstrap, "plain", 1)
    code, err, took = _jizhi(*args, env={}, timeout=60)
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and "kafka.security_protocol" in lines[0], err
    assert took < 20, f"{took:.1f} s"
