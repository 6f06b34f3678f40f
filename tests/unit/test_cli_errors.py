"""What a user sees when something expected goes wrong: one ``error:`` line and exit 1 (2 for a
wrong flag or setting), never a traceback; a bug keeps its traceback.

The subprocess runs are the real command line (``python -m jizhi.cli``), as a user runs it, and
need no broker: the addresses they are given have nothing listening.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import jizhi.publish
from allocator.errors import AllocatorConfigError
from jizhi.cli import main
from jizhi.config import ConfigError
from stages.runtime.kafka import TransportError
from storage.errors import BackendUnavailableError, UnknownTableError

pytestmark = pytest.mark.processes


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _jizhi(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jizhi.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr.strip().splitlines(), time.monotonic() - t0


@pytest.fixture
def quick(tmp_path: Path) -> Path:
    """Settings that give up on an absent broker after 2 s instead of the default 10 s."""
    path = tmp_path / "quick.toml"
    path.write_text("[kafka]\nconnect_timeout_s = 2.0\n")
    return path


@pytest.mark.parametrize("command", ["publish", "worker"])
def test_a_wrong_bootstrap_fails_in_bounded_time_with_one_line(command: str, quick: Path) -> None:
    """Before: ~580 librdkafka ``Connect ... failed`` lines over 31 s, then the error."""
    where = f"127.0.0.1:{_closed_port()}"
    extra = ["--stages", "all", "--metrics-port", "0"] if command == "worker" else []
    code, lines, took = _jizhi(command, "--bootstrap", where, "--config", str(quick), *extra)
    assert code == 1, lines
    assert lines == [lines[0]] and lines[0].startswith(f"error: cannot reach Kafka at {where}")
    assert "within 2 s" in lines[0] and "Connection refused" in lines[0], lines
    assert took < 10.0, f"{took:.1f} s"


def test_an_unreachable_store_is_an_error_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text(
        '[store]\nbackend = "aerospike"\n'
        f'[store.aerospike]\nhosts = ["127.0.0.1:{_closed_port()}"]\nconnect_timeout_ms = 300\n'
    )
    code, lines, _ = _jizhi(
        "embeddings",
        "generate",
        "--rows",
        "10",
        "--table",
        "t",
        "--config",
        str(config),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--no-progress",
    )
    assert code == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith("error: ") and "unreachable" in lines[-1], lines


def test_a_password_in_the_config_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\nusername = "u"\npassword = "hunter2"\n')
    code, lines, _ = _jizhi("publish", "--bootstrap", "127.0.0.1:1", "--config", str(config))
    assert code == 2, lines
    assert len(lines) == 1 and "kafka.password: secrets are not read" in lines[0], lines
    assert "hunter2" not in lines[0]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnknownTableError("table 'users': not in store /x"), 1),
        (BackendUnavailableError("table 'users': aerospike 127.0.0.1:3000 unreachable"), 1),
        (TransportError("cannot list topics at 127.0.0.1:9: down", retriable=True), 1),
        (FileNotFoundError(2, "No such file or directory", "/no/such.npz"), 1),
        (ConfigError("kafka.ca_file: /x is not a readable file"), 2),
        (AllocatorConfigError("stages: ['nope'] are not stages of pipeline 'demo'"), 2),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_every_expected_error_is_one_line_with_its_exit_code(
    exc: Exception, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish_raises(monkeypatch, exc)
    monkeypatch.delenv("JIZHI_DEBUG", raising=False)
    assert main(["publish", "--bootstrap", "127.0.0.1:1"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]


def test_an_aerospike_client_error_is_one_line() -> None:
    """E.g. a user and password given to a server without security, raised by the client."""
    pytest.importorskip("aerospike")
    code, lines = _main_raising(
        "import aerospike.exception as e; raise e.SecurityNotEnabled(52, 'security not enabled')"
    )
    assert code == 1, lines
    assert lines == ["error: aerospike SecurityNotEnabled (code 52): security not enabled"], lines


def test_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish_raises(monkeypatch, IndexError("index 0 is out of bounds for axis 0 with size 0"))
    with pytest.raises(IndexError):
        main(["publish", "--bootstrap", "127.0.0.1:1"])


def test_jizhi_debug_shows_the_traceback_of_an_expected_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish_raises(monkeypatch, UnknownTableError("table 'users': not in store /x"))
    monkeypatch.setenv("JIZHI_DEBUG", "1")
    assert main(["publish", "--bootstrap", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: table 'users'")


def _publish_raises(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """`jizhi publish` replaced by a command that raises ``exc``, for main to report."""

    def fail(args: Any) -> int:
        raise exc

    monkeypatch.setattr(jizhi.publish, "_run", fail)


def _main_raising(statement: str) -> tuple[int, list[str]]:
    """The CLI's main, in a fresh process, with the publish command replaced by ``statement``."""
    script = (
        "import sys, jizhi.publish, jizhi.cli\n"
        "def _fail(args):\n"
        f"    {statement}\n"
        "jizhi.publish._run = _fail\n"
        "sys.exit(jizhi.cli.main(['publish', '--bootstrap', '127.0.0.1:1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "JIZHI_DEBUG"},
    )
    return done.returncode, done.stderr.strip().splitlines()
