"""Errors of the browser pool: the ones a model may act on are ToolErrors, the rest are ops errors."""

from __future__ import annotations

from tools.registry import ToolError, ToolOutcomeUnknown

__all__ = ["BrowserLaunchError", "BrowserLost", "BrowserUnhealthy", "PageError", "PoolFull"]


class PageError(ToolError):
    """A page operation failed; `trace` holds a Playwright trace (zip bytes) when one was recorded."""

    def __init__(self, message: str, *, retryable: bool = False, trace: bytes | None = None):
        super().__init__(message, retryable=retryable)
        self.trace = trace

    def __reduce__(self):  # keeps retryable and trace across a Ray boundary
        return (_rebuild_page_error, (type(self), self.message, self.retryable, self.trace))


def _rebuild_page_error(cls: type[PageError], message: str, retryable: bool, trace: bytes | None) -> PageError:
    err = PageError.__new__(cls)
    PageError.__init__(err, message, retryable=retryable, trace=trace)
    return err


class PoolFull(PageError):
    """Every session slot is busy; retrying later (or on another replica) may succeed."""

    def __init__(self, active: int, limit: int):
        super().__init__(
            f"the browser pool is full ({active}/{limit} sessions, all busy); retry later "
            "or raise max_sessions in the BrowserPool user_config",
            retryable=True,
        )
        self.active = active
        self.limit = limit

    def __reduce__(self):
        return (PoolFull, (self.active, self.limit))


class BrowserUnhealthy(RuntimeError):
    """The browser crashed or stopped answering; the pool relaunches it (or Serve restarts the replica)."""


class BrowserLaunchError(RuntimeError):
    """Chromium could not be started; the message says which executable was tried and what to do."""


class BrowserLost(ToolOutcomeUnknown):
    """The browser (or the replica holding it) died while an operation ran: whether a click or
    a submit took effect is unknown. A read is run again; a side-effecting step asks the user."""

    def __init__(self, op: str, why: str):
        super().__init__(f"the browser was lost during {op}: {why}")
        self.op, self.why = op, why

    def __reduce__(self):
        return (BrowserLost, (self.op, self.why))
