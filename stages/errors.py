"""Errors of the stages package.

Bad *data* is never raised: a stage returns a `DeadLetter` for it. These exceptions mean the code or
the infrastructure is wrong, so a runner stops on them instead of dead-lettering forever.
"""

from __future__ import annotations


class JizhiError(Exception):
    """Root of every error jizhi raises on purpose."""


class StageContractError(JizhiError):
    """A stage broke the runtime's contract (e.g. returned a batch of the wrong length)."""


class ModelError(JizhiError):
    """The model file is missing, malformed, or does not fit the embedding tables."""


class PipelineConfigError(JizhiError):
    """The pipeline definition names an unknown stage or puts stages out of order."""
