"""A pipeline's shape as data: its stages in order, which one is the edge, where each one's
output goes, and which runs of it one process may host.

The transport reads the shape from here (a stage's input is ``requests`` at the edge and the
stage's own topic otherwise; its output is the next stage's input, or the responses after the
last), so no module but the registry knows a stage by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from stages.context import StageContext
from stages.errors import PipelineConfigError
from stages.stage import Stage, Takes

RESERVED_NAMES: Final = frozenset({"requests", "responses", "dead", "control"})
"""Topic suffixes of a pipeline that are not stages."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One declared stage: its name in the pipeline, what it is, what it reads, how to make it."""

    name: str
    use: str
    takes: Takes
    params: Any
    factory: Callable[[Any, StageContext], Stage[Any]]

    def build(self, context: StageContext) -> Stage[Any]:
        """A fresh instance (each chain of a worker gets its own, as each thread needs)."""
        stage = self.factory(self.params, context)
        if getattr(stage, "name", None) != self.name:
            # The runtime labels metrics and latency stamps by the name the pipeline uses.
            stage.name = self.name
        return stage


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A named service's stages in order. Built by `stages.registry.build_pipeline`."""

    name: str
    stages: tuple[StageSpec, ...]

    @classmethod
    def of(cls, name: str, specs: Sequence[StageSpec], *, where: str = "stages") -> Pipeline:
        if not specs:
            raise PipelineConfigError(f"{where}: a pipeline needs at least one stage")
        seen: set[str] = set()
        for i, s in enumerate(specs):
            if not _NAME.match(s.name):
                raise PipelineConfigError(
                    f"{where}[{i}]: stage name {s.name!r} must be 1-64 of A-Z a-z 0-9 _ -"
                )
            if s.name in RESERVED_NAMES:
                raise PipelineConfigError(
                    f"{where}[{i}]: {s.name!r} is a topic of the pipeline, not a stage name; "
                    "give the stage another name"
                )
            if s.name in seen:
                raise PipelineConfigError(
                    f"{where}[{i}]: stage name {s.name!r} is used twice; "
                    "give one of them a name of its own"
                )
            seen.add(s.name)
        if specs[0].takes != "requests":
            raise PipelineConfigError(
                f"{where}[0]: the first stage must read the clients' request bytes "
                f"(like ingest); {specs[0].name!r} reads events"
            )
        late = [s.name for s in specs[1:] if s.takes == "requests"]
        if late:
            raise PipelineConfigError(
                f"{where}: {late} read raw requests, so they can only come first"
            )
        return cls(name, tuple(specs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def edge(self) -> str:
        """The stage that reads the requests topic."""
        return self.stages[0].name

    def spec(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise PipelineConfigError(
            f"pipeline {self.name!r} has no stage {name!r}; its stages: {list(self.names)}"
        )

    def after(self, name: str) -> str | None:
        """The stage that reads ``name``'s output, or None when ``name`` answers the client."""
        i = self.names.index(self.spec(name).name)
        return self.names[i + 1] if i + 1 < len(self.stages) else None

    def chains(self, names: Sequence[str]) -> list[list[str]]:
        """``names`` as runs of consecutive stages, one chain per run.

        The names must be given in the pipeline's order, each once: a list that is empty, names
        an unknown stage or reorders them is refused, never repaired, because a worker silently
        running something else than was asked is worse than one that does not start.
        """
        if not names:
            raise PipelineConfigError(
                f"pipeline {self.name!r}: no stages given; its stages: {list(self.names)}"
            )
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise PipelineConfigError(
                f"pipeline {self.name!r}: unknown stage(s) {unknown}; "
                f"its stages: {list(self.names)}"
            )
        if len(set(names)) != len(names):
            raise PipelineConfigError(f"pipeline {self.name!r}: {list(names)} repeats a stage")
        index = [self.names.index(n) for n in names]
        if index != sorted(index):
            raise PipelineConfigError(
                f"pipeline {self.name!r}: {list(names)} are out of order; "
                f"the pipeline runs {list(self.names)}"
            )
        runs: list[list[str]] = []
        for i, n in zip(index, names, strict=True):
            if runs and self.names.index(runs[-1][-1]) == i - 1:
                runs[-1].append(n)
            else:
                runs.append([n])
        return runs

    def build(self, names: Sequence[str], context: StageContext) -> list[Stage[Any]]:
        """Fresh instances of a run of this pipeline's stages."""
        return [self.spec(n).build(context) for n in names]
