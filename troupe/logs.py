"""Logs as JSON lines (TROUPE_LOG_FORMAT=json) carrying the task they are about.

A driver sets `task_context` for the task it drives; every `troupe.*` log record made under
it (in that coroutine and the ones it starts) carries task_id, tenant and trace_id, the
trace id being the task's own (troupe/tracing.py), so a log line leads to the task's trace.
Text logs (the default) are left to Ray's and Serve's own handlers.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator

from troupe.tracing import task_trace_id

__all__ = ["ENV_LOG_FORMAT", "TaskFields", "setup_logging", "task_context"]

ENV_LOG_FORMAT = "TROUPE_LOG_FORMAT"

_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("troupe_task", default=None)


@contextlib.contextmanager
def task_context(task_id: str, tenant: str) -> Iterator[None]:
    token = _task.set((task_id, tenant))
    try:
        yield
    finally:
        _task.reset(token)


class TaskFields(logging.Filter):
    """Adds task_id, tenant and trace_id to records made within a task_context."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _task.get()
        if current is not None and not hasattr(record, "task_id"):
            record.task_id, record.tenant = current
            record.trace_id = task_trace_id(current[0])
        return True


def setup_logging(stream=None) -> logging.Handler | None:
    """With TROUPE_LOG_FORMAT=json, `troupe.*` loggers write JSON lines to stderr (once per
    process); returns the handler, or None when logs stay text."""
    if os.environ.get(ENV_LOG_FORMAT, "text").lower() != "json":
        return None
    from pythonjsonlogger.json import JsonFormatter

    logger = logging.getLogger("troupe")
    for handler in logger.handlers:
        if getattr(handler, "troupe_json", False):
            return handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.troupe_json = True  # type: ignore[attr-defined]
    handler.addFilter(TaskFields())
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"}))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one line per record, not a JSON line and a text line
    return handler
