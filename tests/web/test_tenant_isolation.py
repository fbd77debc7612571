"""Two tenants on one real BrowserPool: neither sees the other's pages, cookies or session."""

from __future__ import annotations

import uuid

import pytest

import tools.web.tools  # noqa: F401  (registers the web tools)
from tools.registry import ToolContext, ToolError, default_registry
from tools.web.search import TenantIndexes


@pytest.fixture
def tenant_ctx(pool, tmp_path, monkeypatch):
    monkeypatch.delenv("TROUPE_SEARXNG_URL", raising=False)  # the local index, not a search engine

    def make(tenant: str) -> ToolContext:
        return ToolContext(task_id=f"{tenant}-{uuid.uuid4().hex[:8]}", tenant=tenant, node_id="n1",
                           idempotency_key=uuid.uuid4().hex, workspace=tmp_path / tenant, extras={"browser": pool})

    return make


async def call(ctx: ToolContext, name: str, **args):
    return await default_registry.get(name)(ctx, args)


async def test_web_search_never_returns_a_page_another_tenant_read(tenant_ctx, site):
    suffix = uuid.uuid4().hex[:8]
    alice, mallory = tenant_ctx(f"alice-{suffix}"), tenant_ctx(f"mallory-{suffix}")
    secret = f"alicesecret{uuid.uuid4().hex}"
    await call(alice, "browse", url=f"{site.url}/setcookie?v={secret}", settle_s=0)
    await call(mallory, "crawl", url=f"{site.url}/docs/", max_pages=3, max_depth=1)

    own = await call(alice, "web_search", query=secret)
    assert own["source"] == "local_index" and any(secret in r["url"] for r in own["results"])  # the control
    for query in (secret, "set", f"setcookie {secret}", "who"):
        found = await call(mallory, "web_search", query=query)
        assert secret not in str({k: v for k, v in found.items() if k != "query"}), query  # the query echoes it
        assert all("/docs/" in url for url in found["urls"]), query
    theirs = await call(mallory, "web_search", query="documentation page")
    assert theirs["results"] and all("/docs/" in r["url"] for r in theirs["results"])
    assert not (await call(alice, "web_search", query="documentation page"))["results"]  # and the other way


async def test_cookies_and_sessions_stay_with_their_task_and_tenant(tenant_ctx, pool, site):
    suffix = uuid.uuid4().hex[:8]
    alice, mallory = tenant_ctx(f"alice-{suffix}"), tenant_ctx(f"mallory-{suffix}")
    secret = f"cookie{uuid.uuid4().hex}"
    await call(alice, "browse", url=f"{site.url}/setcookie?v={secret}", settle_s=0)
    assert (await call(alice, "browse", url=f"{site.url}/whoami", settle_s=0))["text"] == secret
    assert (await call(mallory, "browse", url=f"{site.url}/whoami", settle_s=0))["text"] == "nobody"
    # A second task of the same tenant gets a fresh context too.
    assert (await call(tenant_ctx(alice.tenant), "browse", url=f"{site.url}/whoami", settle_s=0))["text"] == "nobody"
    # Naming alice's session with mallory's tenant gets neither her page nor her cookies.
    with pytest.raises(ToolError, match="belongs to another tenant") as exc:
        await pool.browse(alice.task_id, f"{site.url}/whoami", settle_s=0, tenant=mallory.tenant)
    assert secret not in exc.value.message
    with pytest.raises(ToolError, match="belongs to another tenant"):
        await pool.screenshot(alice.task_id, tenant=mallory.tenant)
    await pool.release(alice.task_id)


def test_indexes_share_one_page_budget_oldest_first():
    indexes = TenantIndexes(max_docs=3)
    for i, tenant in enumerate(["a", "b", "a", "b"]):
        indexes.add(tenant, f"http://x/{i}", f"page {i}", f"zebra text {i}", "now")
    assert len(indexes) == 3 and indexes.pages("a") == 1 and indexes.pages("b") == 2
    assert [r["url"] for r in indexes.search("a", "zebra")] == ["http://x/2"]
    assert indexes.search("nobody", "zebra") == []
    indexes.add("a", "http://x/2", "page 2", "zebra again", "later")  # a re-read is the newest, not a new page
    indexes.add("c", "http://x/9", "page 9", "zebra", "now")
    assert len(indexes) == 3 and indexes.pages("b") == 1 and [r["url"] for r in indexes.search("b", "zebra")] == [
        "http://x/3"]
