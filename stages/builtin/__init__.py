"""The five built-in stages, in pipeline order."""

from stages.builtin.embed import Embed
from stages.builtin.features import Features
from stages.builtin.ingest import Ingest
from stages.builtin.rank import Rank
from stages.builtin.score import Score

__all__ = ["Embed", "Features", "Ingest", "Rank", "Score"]
