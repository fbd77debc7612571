"""Long-term memory: what is taken from a user's words (troupe/preferences.py), and how it is
kept per tenant and project (memory/memories.py), on SQLite and PostgreSQL."""

import pytest

from memory.memories import MemoryStore
from memory.store import EventStore
from troupe.preferences import Noted, extract_memories


@pytest.mark.parametrize("text, expected", [
    ("Summarize the news. Always cite primary sources. Our fiscal year starts in April.",
     [Noted("preference", "Always cite primary sources."), Noted("fact", "Our fiscal year starts in April.")]),
    ("From now on, write in British English!", [Noted("preference", "From now on, write in British English!")]),
    ("We always report in EUR; the rest is as usual.", [Noted("preference", "We always report in EUR")]),
    ("- never use Comic Sans\n- our brand color is teal",
     [Noted("preference", "never use Comic Sans"), Noted("fact", "our brand color is teal")]),
    # Words that only describe this task are not kept.
    ("Find out why the test never passes", []),
    ("Summarize our Q3 results which are attached", []),
    ("always fails", []),
    ("Always cite sources. ALWAYS CITE SOURCES.", [Noted("preference", "Always cite sources.")]),
    # Credentials are never kept, however they are put.
    ("Our API key is abc. My password is hunter2. Always use token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4.", []),
])
def test_what_is_worth_remembering(text, expected):
    assert extract_memories(text) == expected


@pytest.fixture
async def memories(any_store_url):
    store = EventStore(any_store_url)
    await store.migrate()
    yield MemoryStore(store)
    await store.close()


async def test_memories_are_kept_once_per_tenant_scoped_by_project_and_forgotten(memories):
    import uuid

    acme, globex = f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}"
    kept = await memories.remember(acme, "preference", "Always cite sources.", source="goal", task_id="t1")
    assert kept is not None and kept.public()["source"] == {"task_id": "t1", "where": "goal"}
    assert await memories.remember(acme, "preference", "always  CITE sources.", source="goal", task_id="t2") is None
    await memories.remember(acme, "fact", "Our code name is Kite.", source="api", project="kite")
    await memories.remember(globex, "preference", "Never use tables.", source="goal", task_id="t3")

    assert [m.text for m in await memories.list(acme)] == ["Always cite sources."]
    assert {m.text for m in await memories.list(acme, project="kite")} == {"Always cite sources.",
                                                                            "Our code name is Kite."}
    assert len(await memories.list(acme, every_project=True)) == 2
    assert [m.text for m in await memories.list(globex)] == ["Never use tables."]

    assert not await memories.forget(globex, kept.memory_id)  # another tenant's memory
    assert await memories.forget(acme, kept.memory_id)
    assert [m.text for m in await memories.list(acme, every_project=True)] == ["Our code name is Kite."]
