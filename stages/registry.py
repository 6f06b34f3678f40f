"""The one list of stage kinds: built-in names, and any ``package.module:Class`` a config names.

A stage kind is known by three things: how to build it (its factory, given its validated
parameters and the pipeline's `StageContext`), what it reads (raw request bytes at the edge, or
events) and which parameters it accepts. Built-in kinds declare their parameters as msgspec
structs; a user's class declares them with its ``__init__`` signature, so the stage written for
the harness is the stage deployed, with no second description of it. Everything else (config,
workers, the demo, the allocator, topic wiring) asks this module or the `Pipeline` it builds.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from stages.builtin import Embed, Features, Ingest, Rank, Score
from stages.context import StageContext
from stages.errors import PipelineConfigError
from stages.events import MAX_CANDIDATES
from stages.pipeline import RESERVED_NAMES, Pipeline, StageSpec
from stages.stage import Stage, Takes, takes_of

Factory = Callable[[Any, StageContext], Stage[Any]]


class StageEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A stage as a config lists it: ``use`` a built-in name or ``package.module:Class``,
    ``name`` it in this pipeline (default: the stage's own name), with ``params``."""

    use: str
    name: str = ""
    params: dict[str, Any] = {}


EntryLike = str | StageEntry | Mapping[str, Any]


# -- built-in kinds ------------------------------------------------------------------------------


class IngestParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The edge's limits on untrusted input (README, "Requests and responses")."""

    max_payload_bytes: typing.Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    max_candidates: typing.Annotated[int, msgspec.Meta(ge=1, le=MAX_CANDIDATES)] = MAX_CANDIDATES
    max_exclude: typing.Annotated[int, msgspec.Meta(ge=0)] = MAX_CANDIDATES
    max_context_keys: typing.Annotated[int, msgspec.Meta(ge=0)] = 64
    max_timeout_ms: typing.Annotated[float, msgspec.Meta(gt=0)] = 3_600_000.0
    dedupe_window: typing.Annotated[int, msgspec.Meta(ge=0)] = 100_000


class TableParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    table: str = ""
    """Default: the store's ``user_table`` (features) or ``item_table`` (embed)."""


class NoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


def _ingest(p: IngestParams, ctx: StageContext) -> Stage[Any]:
    return Ingest(
        default_timeout_ms=ctx.default_timeout_ms,
        max_payload_bytes=p.max_payload_bytes,
        max_candidates=p.max_candidates,
        max_exclude=p.max_exclude,
        max_context_keys=p.max_context_keys,
        max_timeout_ms=p.max_timeout_ms,
        dedupe_window=p.dedupe_window,
        admission=ctx.shared_admission(),
        clock=ctx.clock,
    )


def _features(p: TableParams, ctx: StageContext) -> Stage[Any]:
    return Features(ctx.store(), table=p.table or ctx.user_table, context_dim=ctx.context_dim)


def _embed(p: TableParams, ctx: StageContext) -> Stage[Any]:
    return Embed(ctx.store(), table=p.table or ctx.item_table)


def _score(p: NoParams, ctx: StageContext) -> Stage[Any]:
    model = ctx.model()
    return Score(model, towers=ctx.towers(model))


def _rank(p: NoParams, ctx: StageContext) -> Stage[Any]:
    return Rank()


@dataclass(frozen=True, slots=True)
class StageKind:
    """How to make one kind of stage, and what it needs to be made."""

    use: str
    default_name: str
    takes: Takes
    params: type[msgspec.Struct]
    factory: Factory


BUILTIN: dict[str, StageKind] = {
    k.use: k
    for k in (
        StageKind("ingest", "ingest", "requests", IngestParams, _ingest),
        StageKind("features", "features", "events", TableParams, _features),
        StageKind("embed", "embed", "events", TableParams, _embed),
        StageKind("score", "score", "events", NoParams, _score),
        StageKind("rank", "rank", "events", NoParams, _rank),
    )
}

DEFAULT_STAGES: tuple[str, ...] = tuple(BUILTIN)
"""The built-in recommendation pipeline, in order."""


# -- user kinds ----------------------------------------------------------------------------------

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _import(use: str) -> type[Any]:
    """The class ``package.module:Class`` names; the working directory is searched too, so a
    user's stage next to their config imports without packaging it."""
    module_name, _, attr = use.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineConfigError(f"cannot import module {module_name!r}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise PipelineConfigError(f"module {module_name!r} has no attribute {attr!r}")
    if not inspect.isclass(cls) or not callable(getattr(cls, "process", None)):
        raise PipelineConfigError(f"{use} is not a stage class (it needs a process method)")
    return cls


def _declared_params(cls: type[Any]) -> tuple[type[msgspec.Struct], bool]:
    """A struct of the keyword parameters ``cls.__init__`` declares, and whether it wants the
    `StageContext` (a parameter named ``context``)."""
    init = cls.__init__
    if init is object.__init__:
        return msgspec.defstruct(f"{cls.__name__}Params", [], forbid_unknown_fields=True), False
    try:
        hints = typing.get_type_hints(init)
    except Exception as exc:  # a hint naming something the module does not import
        raise PipelineConfigError(
            f"{cls.__qualname__}.__init__ has unresolvable hints: {exc}"
        ) from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    wants_context = False
    for i, (pname, param) in enumerate(inspect.signature(init).parameters.items()):
        if i == 0 or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # self, *args, **kwargs
        if pname == "context":
            wants_context = True
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise PipelineConfigError(
                f"{cls.__qualname__}.__init__: parameter {pname!r} is positional-only; "
                "a config can only pass parameters by name"
            )
        hint = hints.get(pname, Any)
        if param.default is param.empty:
            fields.append((pname, hint))
        else:
            fields.append((pname, hint, param.default))
    struct = msgspec.defstruct(
        f"{cls.__name__}Params", fields, forbid_unknown_fields=True, frozen=True
    )
    return struct, wants_context


def _user_kind(use: str) -> StageKind:
    cls = _import(use)
    params, wants_context = _declared_params(cls)

    def factory(p: Any, ctx: StageContext) -> Stage[Any]:
        kwargs = msgspec.structs.asdict(p)
        if wants_context:
            kwargs["context"] = ctx
        stage: Stage[Any] = cls(**kwargs)
        return stage

    try:
        takes = takes_of(cls)
    except ValueError as exc:
        raise PipelineConfigError(str(exc)) from exc
    return StageKind(
        use, str(getattr(cls, "name", "") or cls.__name__.lower()), takes, params, factory
    )


def kind(use: str) -> StageKind:
    """A built-in kind by name, or a user's class by import path."""
    if use in BUILTIN:
        return BUILTIN[use]
    if _IMPORT_PATH.match(use):
        return _user_kind(use)
    raise PipelineConfigError(
        f"unknown stage {use!r}: use a built-in ({', '.join(BUILTIN)}) or package.module:Class"
    )


# -- resolving a declared pipeline ---------------------------------------------------------------


def _entry(raw: EntryLike) -> StageEntry:
    if isinstance(raw, StageEntry):
        return raw
    if isinstance(raw, str):
        return StageEntry(use=raw)
    try:
        return msgspec.convert(raw, StageEntry)
    except msgspec.ValidationError as exc:
        raise PipelineConfigError(_where(str(exc), "")) from exc


def _where(message: str, prefix: str) -> str:
    """msgspec's ``... - at `$.a.b``` as ``prefix.a.b: ...``; an unknown field names itself."""
    head, sep, at = message.rpartition(" - at `$")
    if not sep:
        head, at = message, "`"
    path = prefix + at.rstrip("`")
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", head)
    if unknown:
        return f"{path}.{unknown[1]}: unknown key"
    return f"{path}: {head}" if path else head


def resolve(raw: EntryLike, *, where: str = "stage") -> StageSpec:
    """One declared stage, with its parameters validated; errors name ``where`` and the key."""
    try:
        entry = _entry(raw)
        k = kind(entry.use)
    except PipelineConfigError as exc:
        raise PipelineConfigError(f"{where}: {exc}") from exc
    try:
        params = msgspec.convert(entry.params, k.params)
    except msgspec.ValidationError as exc:
        raise PipelineConfigError(_where(str(exc), f"{where}.params")) from exc
    except TypeError as exc:  # a hint msgspec cannot validate (e.g. an arbitrary class)
        raise PipelineConfigError(f"{where}: {entry.use}: {exc}") from exc
    name = entry.name or k.default_name
    return StageSpec(name=name, use=entry.use, takes=k.takes, params=params, factory=k.factory)


def build_pipeline(
    name: str, entries: Sequence[EntryLike] = DEFAULT_STAGES, *, where: str = "stages"
) -> Pipeline:
    """The declared stages, each resolved and validated, as a `Pipeline` (which checks the
    shape: one edge stage, first; unique names)."""
    specs = tuple(resolve(e, where=f"{where}[{i}]") for i, e in enumerate(entries))
    return Pipeline.of(name, specs, where=where)


__all__ = [
    "BUILTIN",
    "DEFAULT_STAGES",
    "RESERVED_NAMES",
    "StageEntry",
    "StageKind",
    "build_pipeline",
    "kind",
    "resolve",
]
