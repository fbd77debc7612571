"""Tunables of the browser pool (the BrowserPool deployment's `user_config`), and which Chromium to run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.egress import EgressOverrides
from tools.web.errors import BrowserLaunchError

__all__ = ["LAUNCH_ARGS", "BrowserPoolConfig", "find_chromium"]

ENV_BROWSER_PATH = "TROUPE_BROWSER_PATH"

# Debian's headless shell first: the real binary rather than /usr/bin's shell wrapper, which
# does not `exec` and so would sit between Playwright's signals and the browser.
_CANDIDATES = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium-headless-shell",
    "/usr/bin/chromium",
)

# Without the background-networking switches Chromium keeps calling Google services, which
# on a closed network means a stream of failing connections from every browser.
LAUNCH_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-breakpad",
    "--disable-domain-reliability",
    # WebRTC would send UDP around the egress proxy.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
)


class BrowserPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_sessions: int = Field(8, ge=1, le=256, description="Contexts (tasks) one browser holds at once.")
    max_pages_per_session: int = Field(
        4, ge=2, le=32, description="Open tabs per session: the current page plus at least one crawl worker.")
    idle_timeout_s: float = Field(300.0, gt=0, description="A session unused this long is closed.")
    slot_wait_s: float = Field(
        120.0, ge=0, description="A new session waits this long for a slot while every session is busy, "
                                 "before the call fails with 'pool full' (retryable).")
    navigation_timeout_s: float = Field(30.0, gt=0, description="Upper bound on any page load.")
    action_timeout_s: float = Field(10.0, gt=0, description="Default for click, fill and selectors.")
    max_page_bytes: int = Field(10 * 2**20, ge=1024, description="Bytes a page may pull before loading stops.")
    launch_timeout_s: float = Field(30.0, gt=0)
    health_timeout_s: float = Field(5.0, gt=0, description="A browser slower than this to answer is hung.")
    executable_path: str | None = Field(
        None, description=f"Chromium binary; default ${ENV_BROWSER_PATH}, then Debian's.")
    extra_args: tuple[str, ...] = ()
    user_agent: str | None = None
    viewport_width: int = Field(1280, ge=200, le=4096)
    viewport_height: int = Field(800, ge=200, le=4096)
    trace_failures: bool = Field(True, description="Trace each page step; a failed one returns its Playwright trace.")
    egress: EgressOverrides | None = Field(None, description="Deployment-level egress overrides (trusted).")

    @model_validator(mode="after")
    def _timeouts(self) -> BrowserPoolConfig:
        if self.action_timeout_s > self.navigation_timeout_s:
            raise ValueError(
                f"action_timeout_s ({self.action_timeout_s:g}) must be less than or equal to "
                f"navigation_timeout_s ({self.navigation_timeout_s:g})"
            )
        return self


def find_chromium(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The Chromium to launch; None means Playwright's own download."""
    env = os.environ if env is None else env
    chosen = explicit or env.get(ENV_BROWSER_PATH)
    if chosen:
        path = shutil.which(chosen)
        if not path:
            raise BrowserLaunchError(
                f"{'executable_path' if explicit else ENV_BROWSER_PATH}={chosen!r} is not an executable file; "
                "point it at a Chromium binary such as /usr/bin/chromium-headless-shell"
            )
        return path
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)
