"""Web research: a pooled Chromium with per-task sessions, crawl, search and extraction.

`tools.web.tools` holds the `@tool` functions (import it to register them); `BrowserPool`
is the service they use. Names load lazily so that importing the tools does not load
Playwright in processes that only call a remote pool.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BrowserPool", "BrowserPoolConfig", "PageIndex", "find_chromium"]

_WHERE = {
    "BrowserPool": "tools.web.browser_pool",
    "BrowserPoolConfig": "tools.web.config",
    "find_chromium": "tools.web.config",
    "PageIndex": "tools.web.search",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tools.web' has no attribute {name!r}")
