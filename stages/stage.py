"""The stage contract: one batch in, one result per input out, in the same order.

Keeping outputs positional (``len(out) == len(batch)``) lets the runtime know which input each
output came from without ids or bookkeeping in the stage, which is what makes committing Kafka
offsets after the outputs are acknowledged cheap and exact. A stage never filters: a request it
will not serve becomes an event with a terminal status (answered early) or a `DeadLetter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, Protocol, TypeVar, runtime_checkable

from stages.events import DeadLetter, Event

In_contra = TypeVar("In_contra", contravariant=True)

Result = Event | DeadLetter

Takes = Literal["requests", "events"]
"""What a stage reads: raw request bytes from clients (the pipeline's edge), or the `Event`s an
earlier stage made. A stage says which through a ``takes`` attribute; without one it takes
events."""

EDGE: Final = "requests"


@runtime_checkable
class Stage(Protocol[In_contra]):
    """A vectorized step of the pipeline; it knows nothing of queues, topics or offsets.

    ``process`` must return exactly one `Event` or `DeadLetter` per input, in input order, and
    raise only when something other than the input is broken (the runner stops on an exception).
    ``open`` runs in the thread that will call ``process``, before the first batch; ``close`` after
    the last.
    """

    name: str

    def open(self) -> None: ...

    def process(self, batch: Sequence[In_contra], /) -> Sequence[Result]: ...

    def close(self) -> None: ...


class BaseStage:
    """Default no-op hooks so a stage only writes ``process``."""

    name: str = "stage"
    takes: Takes = "events"

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None


def takes_of(stage: object) -> Takes:
    """The input kind a stage (instance or class) declares; events unless it says otherwise."""
    takes = getattr(stage, "takes", "events")
    if takes not in ("requests", "events"):
        raise ValueError(f"{stage!r}: takes must be 'requests' or 'events', not {takes!r}")
    return "requests" if takes == "requests" else "events"
