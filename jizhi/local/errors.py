"""The one exception of `jizhi.local`, which says whether running the command again can help."""

from __future__ import annotations

from stages.errors import JizhiError


class LocalClusterError(JizhiError):
    """The local cluster could not be started, inspected or stopped.

    ``retriable`` tells a caller whether running the same command again can help (a download that
    failed, a port taken meanwhile) or whether something must change first (a missing tool, a
    cluster of another size already running).
    """

    def __init__(self, message: str, *, retriable: bool) -> None:
        hint = "retrying may help" if retriable else "retrying will not help until this is fixed"
        super().__init__(f"{message} ({hint})")
        self.retriable = retriable
