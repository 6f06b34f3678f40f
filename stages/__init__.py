"""The stage contract, the event model and the built-in stages of a jizhi pipeline."""

from stages.events import DeadLetter, Event, Request, Response, Status
from stages.harness import StageHarness
from stages.model import ModelShape, RankingModel
from stages.stage import BaseStage, Stage

__all__ = [
    "BaseStage",
    "DeadLetter",
    "Event",
    "ModelShape",
    "RankingModel",
    "Request",
    "Response",
    "Stage",
    "StageHarness",
    "Status",
]
