"""Act: make a stage run the desired number of consumers.

An actuator is three methods, so a compose or Kubernetes actuator is a short module: how many
consumers a stage runs now, make it run ``n``, and where their metrics are. The reconcile loop
only ever asks for the difference, and asks again next look if the world did not follow.
"""

from __future__ import annotations

from typing import Protocol


class Actuator(Protocol):
    def actual(self, stage: str) -> int:
        """Consumers of ``stage`` running now (starting ones included, stopping ones not)."""
        ...

    def scale(self, stage: str, consumers: int) -> None:
        """Start or stop consumers of ``stage`` until ``consumers`` run; returns at once."""
        ...

    def endpoints(self) -> list[str]:
        """Prometheus URLs of the running consumers (empty when scraped elsewhere)."""
        ...


__all__ = ["Actuator"]
