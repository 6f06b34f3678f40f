"""Errors of the Kafka runtime, under the project's one root, `JizhiError`."""

from __future__ import annotations

from stages.errors import JizhiError


class TransportError(JizhiError):
    """Kafka refused or lost something; ``retriable`` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
