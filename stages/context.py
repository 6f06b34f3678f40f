"""What a deployment hands a stage's factory: the pipeline's settings and its shared resources.

Resources are providers, called only by the stages that need them, so a worker running just
``rank`` never opens an embedding store or loads a model, and a user's stage reaches the same
store the built-in ones read without knowing which backend is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stages.admission import Admission
from stages.errors import PipelineConfigError
from stages.model import RankingModel
from storage import ResultCache, TieredStore


def _missing_store() -> TieredStore:
    raise PipelineConfigError("this deployment has no embedding store (store.path)")


def _missing_model() -> RankingModel:
    raise PipelineConfigError("this deployment has no ranking model (model.path)")


@dataclass(frozen=True, kw_only=True)
class StageContext:
    """One per pipeline and process: the stages of a pipeline share its store, model and
    admission control (the allocator's control topic moves the admission rate of all of them)."""

    pipeline: str
    default_timeout_ms: float = 200.0
    min_budget_ms: float = 1.0
    admission_rate: float = 0.0
    context_dim: int = 16
    user_table: str = "users"
    item_table: str = "items"
    tower_cache_bytes: int = 0
    tower_cache_ttl_s: float = 60.0
    store: Callable[[], TieredStore] = _missing_store
    model: Callable[[], RankingModel] = _missing_model
    admission: Admission | None = None
    clock: Callable[[], float] = field(default=time.time)

    def towers(self, model: RankingModel) -> ResultCache | None:
        """The user-tower result cache the score stage may reuse, when one is configured."""
        if not self.tower_cache_bytes:
            return None
        return ResultCache(
            self.tower_cache_bytes, dim=model.shape.tower_dim, ttl=self.tower_cache_ttl_s
        )

    def shared_admission(self) -> Admission:
        """The pipeline's admission control; one object, so a rate set at run time reaches the
        edge stage however many chains the process runs."""
        if self.admission is not None:
            return self.admission
        return Admission(
            rate=self.admission_rate, min_budget_ms=self.min_budget_ms, clock=self.clock
        )
