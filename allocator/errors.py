"""Errors of the allocator package, all under the project's one root, `JizhiError`.

Each says where (the stage, the topic, the config key) and, for what crosses a process or network
boundary, whether trying again can help: the reconcile loop retries a retriable error on its next
look and stops on the rest.
"""

from __future__ import annotations

from stages.errors import JizhiError


class AllocatorError(JizhiError):
    """Root of the allocator's errors."""


class AllocatorConfigError(AllocatorError):
    """An allocator setting is missing or out of range; the message names the key."""


class ObserveError(AllocatorError):
    """The observed state could not be read (broker, worker metrics); ``retriable`` says whether
    the next reconcile may succeed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class ActuatorError(AllocatorError):
    """An actuator could not bring a stage to the desired size; ``retriable`` as above."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable
