"""Settings: frozen, typed, read once at the edge (flags or a TOML file) and passed inward.

``load_settings`` turns any mistake into one `ConfigError` naming the key, e.g.
``pipeline.batch_size: Expected int >= 1``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

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


class KafkaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the broker is and how jizhi's topics are shaped. ``extra`` holds librdkafka keys
    verbatim (e.g. ``security.protocol``); secrets come from the environment, never flags:
    ``JIZHI_KAFKA_SASL_PASSWORD`` becomes ``sasl.password``."""

    bootstrap: str = "127.0.0.1:9092"
    partitions: Positive = 6
    replication: Positive = 1
    exactly_once: bool = False
    extra: dict[str, KafkaValue] = {}

    def client_conf(self) -> dict[str, KafkaValue]:
        conf: dict[str, KafkaValue] = {"bootstrap.servers": self.bootstrap, **self.extra}
        secret = os.environ.get("JIZHI_KAFKA_SASL_PASSWORD")
        if secret:
            conf["sasl.password"] = secret
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
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_dotted(str(exc))}") from exc
    try:
        check_pipelines(settings)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return settings


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
