"""Settings: frozen, typed, read once at the edge (flags or a TOML file) and passed inward.

``load_settings`` turns any mistake into one `ConfigError` naming the key, e.g.
``pipeline.batch_size: Expected int >= 1``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from stages.errors import JizhiError, PipelineConfigError
from stages.pipeline import Pipeline
from stages.registry import DEFAULT_STAGES, StageEntry, build_pipeline
from storage.aerospike_store import AerospikeSettings

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(JizhiError):
    """A setting is missing, of the wrong type, or out of range; the message names the key."""


class PipelineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A service: its stages in order, micro-batching, in-memory queues, deadline, priority.

    ``stages`` lists built-in names or ``package.module:Class`` paths, or tables
    ``{use = ..., name = ..., params = {...}}``. ``priority`` (higher first) decides which
    service keeps its cores when the allocator's budget is short. ``model`` is this service's
    model file; empty means ``[model].path``.
    """

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "demo"
    stages: list[str | StageEntry] = msgspec.field(default_factory=lambda: list(DEFAULT_STAGES))
    priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    model: str = ""
    batch_size: Positive = 64
    batch_wait_ms: NonNegative = 2.0
    batch_candidates: Positive = 16_384
    """Candidates per micro-batch: a batch over it is processed in parts, so one huge request
    never makes its neighbours miss their deadline."""
    queue_capacity: Positive = 1024
    default_timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    min_budget_ms: NonNegative = 1.0
    admission_rate: NonNegative = 0.0
    context_dim: Annotated[int, msgspec.Meta(ge=0)] = 16
    threads: Literal["per_stage", "one"] = "one"


class StoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where embeddings live and how much of them each worker caches."""

    backend: Literal["embedded", "aerospike"] = "embedded"
    path: str = ""
    cache_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 << 20
    user_table: str = "users"
    item_table: str = "items"
    tower_cache_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    tower_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    aerospike: AerospikeSettings = AerospikeSettings()


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ranking model file (``.npz`` written by `RankingModel.save`)."""

    path: str = ""


KafkaValue = str | int | float | bool

# librdkafka keys that carry a secret: a TOML file is copied, committed and printed, so they are
# refused in ``kafka.extra`` and read from the environment or a file instead.
_SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "ssl_key",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.jaas.config",
    }
)
_PASSWORD_ENV = "JIZHI_KAFKA_SASL_PASSWORD"
_KEY_PASSWORD_ENV = "JIZHI_KAFKA_SSL_KEY_PASSWORD"


class KafkaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the broker is, how to authenticate to it, and how jizhi's topics are shaped.

    ``extra`` holds librdkafka keys verbatim and overrides the typed fields. Secrets never come
    from this file or a flag: the SASL password is ``$JIZHI_KAFKA_SASL_PASSWORD`` or the contents
    of ``password_file``, a client key's password ``$JIZHI_KAFKA_SSL_KEY_PASSWORD``.
    ``connect_timeout_s`` bounds the first contact, so a wrong address fails with one line.
    """

    bootstrap: str = "127.0.0.1:9092"
    partitions: Positive = 6
    replication: Positive = 1
    exactly_once: bool = False
    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    extra: dict[str, KafkaValue] = {}

    def validate(self) -> None:
        """Reject what librdkafka would only refuse later, or a secret written into the file."""
        secrets = sorted(k for k in self.extra if k.lower() in _SECRET_KEYS)
        if secrets:
            raise ConfigError(
                f"kafka.extra.{secrets[0]}: secrets are not read from the config file; set "
                f"${_PASSWORD_ENV} (or kafka.password_file) for the SASL password, "
                f"${_KEY_PASSWORD_ENV} for a key's password"
            )
        sasl = self.protocol.startswith("sasl")
        if sasl and not self.username and "sasl.username" not in self.extra:
            raise ConfigError(
                f"kafka.username: required with security_protocol = {self.protocol!r}"
            )
        if self.username and not sasl:
            raise ConfigError(
                f"kafka.username: given, but security_protocol is {self.protocol!r}; "
                "use 'sasl_ssl' (or 'sasl_plaintext')"
            )
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not Path(path).expanduser().is_file():
                raise ConfigError(f"kafka.{key}: {path} is not a readable file")

    @property
    def protocol(self) -> str:
        """The protocol in force: ``extra`` may still name it the librdkafka way."""
        return str(self.extra.get("security.protocol", self.security_protocol)).lower()

    def password(self) -> str:
        """Read at connect time, so a rotated password file is picked up by the next process."""
        secret = os.environ.get(_PASSWORD_ENV, "")
        if secret:
            return secret
        if self.password_file:
            try:
                return Path(self.password_file).expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"kafka.password_file: {exc}") from exc
        return ""

    def client_conf(self) -> dict[str, KafkaValue]:
        """librdkafka's settings for every client jizhi makes; raises `ConfigError` naming the
        field for settings that cannot connect."""
        self.validate()
        conf: dict[str, KafkaValue] = {"bootstrap.servers": self.bootstrap}
        if self.protocol != "plaintext":
            conf["security.protocol"] = self.protocol
        if self.protocol.startswith("sasl"):
            secret = self.password()
            if not secret:
                who = self.username or self.extra.get("sasl.username")
                raise ConfigError(
                    f"kafka.username {who!r} has no password: set ${_PASSWORD_ENV} "
                    "or kafka.password_file"
                )
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.password": secret}
            if self.username:
                conf["sasl.username"] = self.username
        for key, rd in (
            ("ca_file", "ssl.ca.location"),
            ("cert_file", "ssl.certificate.location"),
            ("key_file", "ssl.key.location"),
        ):
            if getattr(self, key):
                conf[rd] = str(Path(getattr(self, key)).expanduser())
        if os.environ.get(_KEY_PASSWORD_ENV):
            conf["ssl.key.password"] = os.environ[_KEY_PASSWORD_ENV]
        conf |= self.extra
        return conf


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[pipeline]`` is the one service, or, when ``[[pipelines]]`` declares several, the
    defaults every one of them starts from."""

    pipeline: PipelineSettings = PipelineSettings()
    pipelines: list[PipelineSettings] = []
    store: StoreSettings = StoreSettings()
    model: ModelSettings = ModelSettings()
    kafka: KafkaSettings = KafkaSettings()
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    metrics_addr: str = "127.0.0.1"

    @property
    def services(self) -> list[PipelineSettings]:
        """Every declared pipeline, in the config's order."""
        return list(self.pipelines) if self.pipelines else [self.pipeline]

    def service(self, name: str | None = None) -> PipelineSettings:
        """The pipeline called ``name``; without a name, the only (or first) one."""
        if name is None:
            return self.services[0]
        for p in self.services:
            if p.name == name:
                return p
        raise ConfigError(
            f"no pipeline named {name!r}; declared: {[p.name for p in self.services]}"
        )

    def named(self, name: str | None) -> Settings:
        """With one ``[pipeline]``, ``name`` renames it (another copy of the service on its own
        topics, as `--pipeline` does); with ``[[pipelines]]`` the names are the config's."""
        if name is None or self.pipelines:
            return self
        return msgspec.structs.replace(
            self, pipeline=msgspec.structs.replace(self.pipeline, name=name)
        )

    def model_path(self, pipeline: PipelineSettings) -> str:
        return pipeline.model or self.model.path


def load_settings(path: Path | None) -> Settings:
    """Settings from a TOML file, or the defaults when ``path`` is None."""
    if path is None:
        return Settings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8, whatever the locale
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if isinstance(raw.get("pipelines"), list):
        defaults = raw.get("pipeline", {})
        if isinstance(defaults, dict):
            defaults = {k: v for k, v in defaults.items() if k != "name"}
            raw["pipelines"] = [
                {**defaults, **p} if isinstance(p, dict) else p for p in raw["pipelines"]
            ]
    _refuse_inline_secrets(raw, path)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_dotted(str(exc))}") from exc
    try:
        settings.kafka.validate()
        check_pipelines(settings)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return settings


def _refuse_inline_secrets(raw: dict[str, Any], path: Path) -> None:
    """A password in TOML would otherwise read as a mere unknown key, inviting a fix that keeps it
    there; say where it belongs instead."""
    kafka = raw.get("kafka")
    if not isinstance(kafka, dict):
        return
    for key in ("password", "sasl_password", "key_password"):
        if key in kafka:
            raise ConfigError(
                f"{path}: kafka.{key}: secrets are not read from the config file; set "
                f"${_PASSWORD_ENV} or kafka.password_file (a file only its owner can read)"
            )


def check_pipelines(settings: Settings) -> None:
    """Resolve every declared stage now, so a typo fails at start, naming its key."""
    names = [p.name for p in settings.services]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"pipelines: the name(s) {twice} are declared twice")
    for i, p in enumerate(settings.services):
        where = f"pipelines[{i}].stages" if settings.pipelines else "pipeline.stages"
        pipeline_of(p, where=where)


def pipeline_of(p: PipelineSettings, *, where: str = "pipeline.stages") -> Pipeline:
    """The declared shape of a service, every stage resolved and its parameters validated."""
    try:
        return build_pipeline(p.name, p.stages, where=where)
    except PipelineConfigError as exc:
        raise ConfigError(str(exc)) from exc


def _dotted(message: str) -> str:
    """msgspec says ``at `$.pipeline.batch_size```; users think in TOML keys."""
    head, sep, where = message.rpartition(" - at `$.")
    where = where.rstrip("`") if sep else ""
    if not sep:
        head = message
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", head)
    if unknown:  # name the offending key itself, not just the table holding it
        return f"{where}.{unknown[1]}: unknown key" if where else f"{unknown[1]}: unknown key"
    return f"{where}: {head}" if where else head


def jizhi_home() -> Path:
    """Where jizhi keeps caches and local state: ``$JIZHI_HOME`` (``~`` expanded; empty counts as
    unset) or ``~/.cache/jizhi``."""
    home = os.environ.get("JIZHI_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "jizhi"
