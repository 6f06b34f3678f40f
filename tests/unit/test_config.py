"""Settings: defaults, TOML overrides, and errors that name the offending key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jizhi.config import (
    ConfigError,
    ModelSettings,
    PipelineSettings,
    Settings,
    StoreSettings,
    jizhi_home,
    load_settings,
)
from stages.errors import JizhiError


def write(tmp_path: Path, text: str, name: str = "jizhi.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


# --- defaults and overrides ------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    s = load_settings(None)
    assert s == Settings()
    p = s.pipeline
    assert (p.name, p.batch_size, p.batch_wait_ms, p.queue_capacity) == ("demo", 64, 2.0, 1024)
    assert (p.default_timeout_ms, p.min_budget_ms, p.admission_rate, p.context_dim) == (
        200.0,
        1.0,
        0.0,
        16,
    )
    assert s.store == StoreSettings("embedded", "", 64 << 20, "users", "items")
    assert s.model == ModelSettings("")
    assert s.metrics_port == 9464


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_file_overrides_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
metrics_port = 0

[pipeline]
name = "prod.eu-1"
batch_size = 8
batch_wait_ms = 3          # an int is fine where a float is expected
admission_rate = 1500.5

[store]
path = "/var/lib/jizhi"
cache_bytes = 0

[model]
path = "model.npz"
""",
    )
    s = load_settings(path)
    assert s.metrics_port == 0
    assert s.pipeline == PipelineSettings(
        name="prod.eu-1", batch_size=8, batch_wait_ms=3.0, admission_rate=1500.5
    )
    assert isinstance(s.pipeline.batch_wait_ms, float)
    assert s.store == StoreSettings(path="/var/lib/jizhi", cache_bytes=0)
    assert s.model.path == "model.npz"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[pipeline]\nbatch_size = 2\n"))
    with pytest.raises(AttributeError):
        s.pipeline.batch_size = 3  # type: ignore[misc]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch_size=st.integers(1, 2**40),
    wait=st.floats(0.0, 1e6),
    port=st.integers(0, 65535),
    name=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
)
def test_any_valid_values_round_trip(
    tmp_path: Path, batch_size: int, wait: float, port: int, name: str
) -> None:
    path = write(
        tmp_path,
        f'metrics_port = {port}\n[pipeline]\nname = "{name}"\n'
        f"batch_size = {batch_size}\nbatch_wait_ms = {wait!r}\n",
    )
    s = load_settings(path)
    assert (s.pipeline.name, s.pipeline.batch_size, s.pipeline.batch_wait_ms, s.metrics_port) == (
        name,
        batch_size,
        wait,
        port,
    )


# --- errors name the key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "detail"),
    [
        ("[pipeline]\nbatch_size = 0", "pipeline.batch_size", ">= 1"),
        ("[pipeline]\nbatch_size = -3", "pipeline.batch_size", ">= 1"),
        ('[pipeline]\nbatch_size = "8"', "pipeline.batch_size", "got `str`"),
        ("[pipeline]\nbatch_size = true", "pipeline.batch_size", "got `bool`"),
        ("[pipeline]\nbatch_size = 2.5", "pipeline.batch_size", "got `float`"),
        ("[pipeline]\nbatch_wait_ms = -0.5", "pipeline.batch_wait_ms", ">= 0"),
        ("[pipeline]\nbatch_wait_ms = nan", "pipeline.batch_wait_ms", ">= 0"),
        ("[pipeline]\nqueue_capacity = 0", "pipeline.queue_capacity", ">= 1"),
        ("[pipeline]\ndefault_timeout_ms = 0", "pipeline.default_timeout_ms", "> 0"),
        ("[pipeline]\nmin_budget_ms = -1", "pipeline.min_budget_ms", ">= 0"),
        ("[pipeline]\nadmission_rate = -1.0", "pipeline.admission_rate", ">= 0"),
        ("[pipeline]\ncontext_dim = -1", "pipeline.context_dim", ">= 0"),
        ('[pipeline]\nname = "has space"', "pipeline.name", "regex"),
        ('[pipeline]\nname = ""', "pipeline.name", "regex"),
        (f'[pipeline]\nname = "{"x" * 65}"', "pipeline.name", "regex"),
        ('[store]\nbackend = "redis"', "store.backend", "'redis'"),
        ("[store]\ncache_bytes = -1", "store.cache_bytes", ">= 0"),
        ("[store]\npath = 3", "store.path", "got `int`"),
        ("[model]\npath = []", "model.path", "got `array`"),
        ("metrics_port = 65536", "metrics_port", "<= 65535"),
        ("metrics_port = -1", "metrics_port", ">= 0"),
        ('metrics_port = "9464"', "metrics_port", "got `str`"),
        ("pipeline = 3", "pipeline", "got `int`"),
        ("[[pipeline]]\nbatch_size = 1", "pipeline", "got `array`"),
    ],
)
def test_bad_value_names_dotted_key(tmp_path: Path, toml: str, key: str, detail: str) -> None:
    path = write(tmp_path, toml + "\n")
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: ")
    assert detail in message
    assert "$." not in message  # TOML keys, not msgspec paths


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("bogus = 1", "bogus"),
        ("[pipeline]\nbatch_sise = 8", "pipeline.batch_sise"),
        ("[store]\ncache = 1", "store.cache"),
        ("[model]\nfile = 'x'", "model.file"),
        ("[piplines]\nbatch_size = 8", "piplines"),
    ],
)
def test_unknown_key_is_named_in_full(tmp_path: Path, toml: str, key: str) -> None:
    path = write(tmp_path, toml + "\n")
    message = config_error(path)
    assert message == f"{path}: {key}: unknown key"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(["batch_size", "queue_capacity"]),
    value=st.integers(-(2**40), 0),
)
def test_any_non_positive_count_is_rejected(tmp_path: Path, field: str, value: int) -> None:
    message = config_error(write(tmp_path, f"[pipeline]\n{field} = {value}\n"))
    assert f": pipeline.{field}: Expected `int` >= 1" in message


def test_config_error_is_a_jizhi_error(tmp_path: Path) -> None:
    with pytest.raises(JizhiError):
        load_settings(write(tmp_path, "[pipeline]\nbatch_size = 0\n"))


# --- unreadable files ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert config_error(path) == f"config file {path} does not exist"


@pytest.mark.parametrize(
    "text",
    ["[pipeline\nbatch_size = 1", "batch_size = ", "a = 1\na = 2\n", "x = 'unterminated"],
)
def test_bad_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"config file {path} is not valid TOML: ")
    assert re.search(r"\((at line \d+, column \d+|at end of document)\)$", message)  # says where


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[pipeline]\nname = "caf\xe9"\n'.encode("latin-1"))
    assert config_error(path).startswith(f"config file {path} is not valid TOML: ")


def test_utf8_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "utf8.toml"
    path.write_bytes('[store]\npath = "/données/嵌入"\n'.encode())
    assert load_settings(path).store.path == "/données/嵌入"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert config_error(tmp_path).startswith(f"config file {tmp_path} cannot be read: ")


# --- jizhi_home ------------------------------------------------------------------------------


def test_jizhi_home_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JIZHI_HOME", str(tmp_path / "state"))
    assert jizhi_home() == tmp_path / "state"


def test_jizhi_home_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JIZHI_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jizhi_home() == tmp_path / ".cache" / "jizhi"
