"""Event store on SQLite and on the local PostgreSQL: dense seq under concurrent appends
from several processes, lease fencing, tenant scoping and cursor pagination."""

import asyncio
import multiprocessing
import uuid

import pytest

from memory.store import PENDING, EventStore, NewEvent, StaleLease, TaskNotFound
from troupe.models import EventType, Priority, TaskStatus

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def db_url(any_store_url):
    return any_store_url


async def new_store(url):
    store = EventStore(url)
    await store.migrate()
    return store


def _appender(url: str, task_id: str, n: int, worker: int) -> None:
    async def run():
        store = EventStore(url)
        for i in range(n):
            await store.append(task_id, [NewEvent(EventType.message, {"worker": worker, "i": i})] * (1 + i % 2))
        await store.close()

    asyncio.run(run())


async def test_concurrent_appends_from_processes_leave_dense_seq(db_url):
    store = await new_store(db_url)
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="default", goal="g", priority=Priority.normal, payload={"goal": "g"})
    workers, per_worker = 4, 25
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(db_url, task_id, per_worker, w)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 120)
        assert p.exitcode == 0
    events = await store.read(task_id)
    expected = 1 + workers * sum(1 + i % 2 for i in range(per_worker))
    assert [e.seq for e in events] == list(range(1, expected + 1))
    assert (await store.get(task_id)).last_seq == expected
    await store.close()


async def test_concurrent_appends_in_one_process(db_url):
    store = await new_store(db_url)
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="default", goal="g", priority=Priority.normal, payload={})
    await asyncio.gather(*(store.append(task_id, [NewEvent(EventType.message, {"i": i})]) for i in range(40)))
    assert [e.seq for e in await store.read(task_id)] == list(range(1, 42))
    await store.close()


async def test_lease_fences_old_driver_and_projection(db_url):
    store = await new_store(db_url)
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="default", goal="g", priority=Priority.normal, payload={})
    first = await store.claim(task_id)
    second = await store.claim(task_id)
    assert second == first + 1
    with pytest.raises(StaleLease):
        await store.append(task_id, [NewEvent(EventType.status, {"status": "executing"})], epoch=first)
    await store.append(task_id, [NewEvent(EventType.status, {"status": "done"})], epoch=second)
    row = await store.get(task_id)
    assert row.status == TaskStatus.done and row.dispatch_state == "terminal"
    assert await store.claim(task_id) is None  # an ended task cannot be dispatched again
    with pytest.raises(TaskNotFound):
        await store.append("nope", [NewEvent(EventType.message, {})])
    await store.close()


async def test_the_tasks_row_follows_waits_wakes_and_follow_ups(db_url):
    """The row's status, dispatch state and `waiting_on` follow the appended events, on each
    shape of append: a wait, a wake, a follow-up on an ended task and on a running one."""
    store = await new_store(db_url)
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="default", goal="g", priority=Priority.normal, payload={})
    epoch = await store.claim(task_id)
    await store.append(task_id, [NewEvent(EventType.status, {"status": "waiting_for_input", "waiting_on": "user"})],
                       epoch=epoch)
    row = await store.get(task_id)
    assert (row.status, row.dispatch_state, row.waiting_on) == (TaskStatus.waiting_for_input, "waiting", "user")
    await store.append(task_id, [NewEvent(EventType.message, {"text": "here"})], wake=True)
    row = await store.get(task_id)
    assert (row.dispatch_state, row.waiting_on) == (PENDING, "user")  # queued again, status left to the driver
    epoch = await store.claim(task_id)
    await store.append(task_id, [NewEvent(EventType.status, {"status": "executing"})], epoch=epoch)
    await store.append(task_id, [NewEvent(EventType.iteration_started, {"iteration": 2})])
    row = await store.get(task_id)  # a follow-up to a running task changes nothing of its row
    assert (row.status, row.dispatch_state, row.waiting_on) == (TaskStatus.executing, "dispatched", None)
    await store.append(task_id, [NewEvent(EventType.status, {"status": "done"})], epoch=epoch)
    await store.append(task_id, [NewEvent(EventType.iteration_started, {"iteration": 3})])
    row = await store.get(task_id)  # on an ended task it reopens it
    assert (row.status, row.dispatch_state) == (TaskStatus.queued, PENDING)
    epoch = await store.claim(task_id)
    # In one append, a status after a follow-up wins.
    await store.append(task_id, [NewEvent(EventType.iteration_started, {"iteration": 4}),
                                 NewEvent(EventType.status, {"status": "failed"})], epoch=epoch)
    row = await store.get(task_id)
    assert (row.status, row.dispatch_state) == (TaskStatus.failed, "terminal")
    assert row.last_seq == len(await store.read(task_id)) == 9
    await store.close()


async def test_tenant_scoping_pagination_and_queue_order(db_url):
    store = await new_store(db_url)
    ids = []
    for i, prio in enumerate([Priority.low, Priority.normal, Priority.high, Priority.normal, Priority.low]):
        tid = f"t{i}-{uuid.uuid4().hex[:6]}"
        ids.append(tid)
        await store.create_task(tid, tenant="acme", goal=f"g{i}", priority=prio, payload={})
    await store.create_task("other", tenant="globex", goal="x", priority=Priority.high, payload={})
    assert await store.get("other", tenant="acme") is None

    seen, cursor = [], None
    while True:
        rows, cursor = await store.list_tasks("acme", limit=2, cursor=cursor)
        seen += [r.task_id for r in rows]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    queue = [r.task_id for r in await store.by_dispatch_state(PENDING) if r.tenant == "acme"]
    assert queue == [ids[2], ids[1], ids[3], ids[0], ids[4]]
    row = await store.get(ids[0])
    assert await store.queue_position(row) == 5  # behind "other" (high) and three acme tasks
    # Search by goal text, any case, with LIKE's wildcards taken literally, in the tenant only.
    await store.create_task("pct", tenant="acme", goal="Raise G1 by 50%", priority=Priority.low, payload={})
    assert [r.task_id for r in (await store.list_tasks("acme", goal_contains="g1"))[0]] == ["pct", ids[1]]
    assert [r.task_id for r in (await store.list_tasks("acme", goal_contains="50%"))[0]] == ["pct"]
    assert (await store.list_tasks("acme", goal_contains="g_"))[0] == []
    assert (await store.list_tasks("globex", goal_contains="g1"))[0] == []
    await store.close()


async def test_group_commit_keeps_each_append_on_its_own(db_url):
    store = await new_store(db_url)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for tid in (a, b):
        await store.create_task(tid, tenant="default", goal="g", priority=Priority.normal, payload={})
    epoch = await store.claim(b)
    results = await asyncio.gather(
        store.append(a, [NewEvent(EventType.message, {"i": 1})]),
        store.append("missing", [NewEvent(EventType.message, {})]),
        store.append(b, [NewEvent(EventType.message, {})], epoch=epoch - 1),
        store.append(b, [NewEvent(EventType.message, {"ok": True})], epoch=epoch),
        store.create_task(a, tenant="default", goal="dup", priority=Priority.normal, payload={}),
        return_exceptions=True,
    )
    assert [e.seq for e in results[0]] == [2]
    assert isinstance(results[1], TaskNotFound) and isinstance(results[2], StaleLease)
    assert [e.seq for e in results[3]] == [2]
    assert isinstance(results[4], Exception)  # a duplicate task id fails alone
    assert [e.seq for e in await store.read(a)] == [1, 2]
    await store.close()


async def test_dispatch_is_round_robin_over_tenants_and_a_tenant_at_its_cap_hides_none(db_url):
    store = await new_store(db_url)
    try:
        async def submit(tenant, n):
            ids = [str(uuid.uuid4()) for _ in range(n)]
            await asyncio.gather(*[store.create_task(t, tenant=tenant, goal="g", priority=Priority.normal,
                                                     payload={"goal": "g"}) for t in ids])
            return ids

        await submit("a", 500)
        b = await submit("b", 5)
        # Tenant a drives 10 tasks, its cap: one pass with room for 10 starts all of b's.
        chosen = await store.fair_pending(10, running={"a": 10}, cap=10)
        assert sorted(r.task_id for r in chosen) == sorted(b)
        # Below its cap, a shares the pass turn by turn with b instead of filling it.
        chosen = await store.fair_pending(6, running={}, cap=10)
        assert [r.tenant for r in chosen].count("b") == 3 and {r.tenant for r in chosen[:2]} == {"a", "b"}
        # The cap counts what a tenant already runs.
        chosen = await store.fair_pending(100, running={"a": 7}, cap=10)
        assert [r.tenant for r in chosen].count("a") == 3 and [r.tenant for r in chosen].count("b") == 5
    finally:
        await store.close()


async def test_a_long_log_is_read_from_its_snapshot_and_the_events_after_it(db_url):
    from troupe.reducer import reduce

    store = await new_store(db_url)
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="acme", goal="g", priority=Priority.normal, payload={"goal": "g"})
    for i in range(6):
        await store.append(task_id, [NewEvent(EventType.llm_called, {"tokens_in": 1, "cost_usd": 0.5})] * 100)
    whole = reduce(await store.read(task_id))
    assert await store.load_task(task_id, tenant="other") is None
    assert await store.load_task(task_id) == whole  # folds 601 events, then writes a snapshot
    await asyncio.gather(*store._background)
    await store.append(task_id, [NewEvent(EventType.llm_called, {"tokens_in": 1})])
    reads = []
    real = store.read
    store.read = lambda tid, **kw: reads.append(kw) or real(tid, **kw)
    task = await store.load_task(task_id)
    assert reads == [{"after_seq": 601}] and task.last_seq == 602 and task.usage.llm_calls == 601
    assert task == reduce(await real(task_id))
    await store.close()
