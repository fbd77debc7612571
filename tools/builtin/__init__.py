"""Built-in tools; importing this package registers them in `default_registry`."""

from tools.builtin import chart, data, files, http_fetch, python_exec, render_report, report, summarize

__all__ = ["chart", "data", "files", "http_fetch", "python_exec", "render_report", "report", "summarize"]
