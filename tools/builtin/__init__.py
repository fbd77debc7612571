"""Built-in tools; importing this package registers them in `default_registry`."""

from tools.builtin import (
    app_bundle,
    app_tests,
    chart,
    code_review,
    data,
    files,
    http_fetch,
    openapi_contract,
    python_exec,
    render_report,
    report,
    summarize,
)

__all__ = ["app_bundle", "app_tests", "chart", "code_review", "data", "files", "http_fetch", "openapi_contract",
           "python_exec", "render_report", "report", "summarize"]
