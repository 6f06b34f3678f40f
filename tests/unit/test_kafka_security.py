"""Security settings without a broker: secrets only from the environment or files, librdkafka keys
rendered verbatim, metrics on loopback by default, nothing unpickled, and the local cluster's
secured listeners."""

from __future__ import annotations

import ast
import inspect
import json
import stat
from pathlib import Path

import pytest

from jizhi.config import ConfigError, KafkaSettings, Settings, load_settings
from jizhi.local.config import render_config
from jizhi.local.security import Security, admin_conf, listener_block, make_secrets, scram_args
from jizhi.local.state import Node, State, load_state
from jizhi.metrics_server import serve_metrics

REPO = Path(__file__).resolve().parents[2]


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("key", ["password", "sasl_password", "key_password"])
def test_a_password_in_the_kafka_table_is_refused_naming_where_it_belongs(
    tmp_path: Path, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"kafka\.{key}: secrets are not read") as err:
        load_settings(_toml(tmp_path, f'[kafka]\n{key} = "hunter2"\n'))
    assert "JIZHI_KAFKA_SASL_PASSWORD" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "ssl.keystore.password"])
def test_a_secret_librdkafka_key_in_extra_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"kafka\.extra\.{key}: secrets are not read"):
        load_settings(_toml(tmp_path, f'[kafka.extra]\n"{key}" = "hunter2"\n'))


def test_sasl_settings_render_librdkafka_keys_with_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("JIZHI_KAFKA_SASL_PASSWORD", "from-env")
    k = KafkaSettings(security_protocol="sasl_ssl", username="jizhi", ca_file=str(ca))
    assert k.client_conf() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "jizhi",
        "sasl.password": "from-env",
        "ssl.ca.location": str(ca),
    }


def test_the_password_file_is_read_when_the_environment_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JIZHI_KAFKA_SASL_PASSWORD", raising=False)
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    k = KafkaSettings(security_protocol="sasl_ssl", username="u", password_file=str(secret))
    assert k.client_conf()["sasl.password"] == "from-file"


def test_sasl_without_any_password_says_where_to_put_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIZHI_KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=r"kafka.username 'u' has no password: set \$JIZHI"):
        KafkaSettings(security_protocol="sasl_ssl", username="u").client_conf()


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"username": "u"}, "kafka.username: given, but security_protocol is 'plaintext'"),
        ({"security_protocol": "sasl_ssl"}, "kafka.username: required"),
        ({"ca_file": "/no/such/ca.pem"}, "kafka.ca_file: /no/such/ca.pem is not a readable"),
    ],
)
def test_settings_that_cannot_connect_name_their_field(
    tmp_path: Path, fields: dict[str, str], complaint: str
) -> None:
    text = "[kafka]\n" + "".join(f'{k} = "{v}"\n' for k, v in fields.items())
    with pytest.raises(ConfigError, match=complaint.replace(".", r"\.")):
        load_settings(_toml(tmp_path, text))


def test_metrics_bind_to_loopback_unless_configured() -> None:
    assert Settings().metrics_addr == "127.0.0.1"
    assert inspect.signature(serve_metrics).parameters["addr"].default == "127.0.0.1"


def test_nothing_is_unpickled() -> None:
    """No pickle, marshal or shelve import, and every ``np.load`` says ``allow_pickle=False``:
    a model or table file from elsewhere must not be able to run code."""
    found = []
    for package in ("jizhi", "stages", "storage", "allocator", "examples"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [a.name for a in node.names]
                    names += (
                        [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                    )
                    found += [f"{path}: imports {n}" for n in names if n in _UNSAFE]
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("np", "numpy")
                    and not any(
                        k.arg == "allow_pickle"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is False
                        for k in node.keywords
                    )
                ):
                    found.append(f"{path}:{node.lineno}: np.load without allow_pickle=False")
    assert not found, found


_UNSAFE = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def _state(tmp_path: Path, security: Security) -> State:
    return State(
        kafka_version="4.1.1",
        cluster_id="x",
        data_dir=str(tmp_path / "data"),
        heap="512m",
        nodes=(Node(1, 19092, 19093),),
        security=security,
    )


def test_a_state_file_from_before_security_reads_as_plaintext(tmp_path: Path) -> None:
    raw = {"kafka_version": "4.1.1", "cluster_id": "x", "data_dir": "/d", "heap": "1g"}
    (tmp_path / "state.json").write_text(json.dumps({**raw, "nodes": []}))
    state = load_state(tmp_path)
    assert state is not None and state.security == "plaintext"


def test_the_plaintext_listeners_are_unchanged(tmp_path: Path) -> None:
    text = listener_block(tmp_path, "plaintext", 9092, 9093)
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093\n" in text
    assert admin_conf(tmp_path, "plaintext") == {}


@pytest.mark.processes
def test_a_secured_node_has_no_plaintext_listener_and_no_password_on_a_command_line(
    tmp_path: Path,
) -> None:
    """openssl makes the CA and certificate (a few child processes, no broker)."""
    state = _state(tmp_path, "sasl_ssl")
    make_secrets(tmp_path, state.bootstrap)
    config = render_config(tmp_path, state, state.nodes[0])
    text = config.read_text()
    settings_lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("PLAINTEXT" in line for line in settings_lines), text
    assert "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL" in text
    assert "listener.name.controller.ssl.client.auth=required" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds the keystore password
    sec = tmp_path / "security"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o700
    for secret in ("jizhi.password", "admin.password", "keystore.password", "ca.key"):
        assert stat.S_IMODE((sec / secret).stat().st_mode) == 0o600, secret
    passwords = [(sec / f"{u}.password").read_text().strip() for u in ("jizhi", "admin")]
    args = " ".join(scram_args(tmp_path))
    assert "saltedpassword=" in args and not any(p in args for p in passwords)
    client = (sec / "client.toml").read_text()
    assert not any(p in client for p in passwords)
    settings = load_settings(sec / "client.toml")
    assert settings.kafka.protocol == "sasl_ssl" and settings.kafka.password() == passwords[0]
