"""Fixtures for the web tools: loopback test sites, a stub resolver, and one shared browser pool."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.web.site import Site
from tools.egress import EgressPolicy
from tools.registry import ToolContext
from tools.web.config import BrowserPoolConfig, find_chromium

# Names the stub resolver knows; anything else fails as if it did not exist. No test ever
# resolves a name through real DNS.
STUB_DNS = {
    "metadata.test": ["169.254.169.254"],
    "intranet.test": ["10.1.2.3"],
    "mapped.test": ["::ffff:192.168.0.1"],
    "loopback.test": ["127.0.0.1"],
}


async def stub_resolver(host: str, port: int) -> list[str]:
    if host in STUB_DNS:
        return STUB_DNS[host]
    raise OSError(f"stub resolver: unknown host {host}")


def _require_chromium() -> None:
    try:
        found = find_chromium()
    except Exception as exc:  # a bad TROUPE_BROWSER_PATH
        pytest.skip(str(exc))
    if found is None:
        message = "no Chromium: `apt-get install chromium-headless-shell` or set TROUPE_BROWSER_PATH"
        if os.environ.get("CI"):  # `make test` installs it; in CI its absence is a failure
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def site():
    with Site("127.0.0.1") as s:
        yield s


@pytest.fixture(scope="session")
def refused_site():
    """A server on 127.0.0.2, which no test policy allows: it must never see a request."""
    with Site("127.0.0.2") as s:
        yield s


def pool_config(**overrides) -> BrowserPoolConfig:
    base = dict(max_sessions=12, navigation_timeout_s=15, action_timeout_s=5, max_page_bytes=2 * 2**20,
                idle_timeout_s=600, health_timeout_s=2)
    return BrowserPoolConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
async def pool():
    """One browser for the session; tests keep apart by using their own session ids."""
    from tools.web.browser_pool import BrowserPool

    _require_chromium()
    async with BrowserPool(pool_config(), egress=EgressPolicy(allow_hosts=["127.0.0.1"]),
                           resolver=stub_resolver) as p:
        yield p


@pytest.fixture
def make_ctx(pool, tmp_path: Path):
    """ToolContext factory: each call is a new task (and so a new browser session)."""

    def make(task_id: str | None = None, **extras) -> ToolContext:
        return ToolContext(task_id=task_id or f"t-{uuid.uuid4().hex[:8]}", tenant="test", node_id="n1",
                           idempotency_key=uuid.uuid4().hex, workspace=tmp_path, extras={"browser": pool, **extras})

    return make
