"""JiZhi's resource manager: observe lag, rates and latency; decide consumers, partitions,
assignment and admission; act through an actuator. See docs/allocator.md."""

from allocator.decide import AllocatorOptions, Decider
from allocator.errors import AllocatorError

__all__ = ["AllocatorError", "AllocatorOptions", "Decider"]
