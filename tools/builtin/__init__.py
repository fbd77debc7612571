"""Built-in tools; importing this package registers them in `default_registry`."""

from tools.builtin import files, http_fetch, python_exec, report, summarize

__all__ = ["files", "http_fetch", "python_exec", "report", "summarize"]
