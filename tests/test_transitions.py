"""User-side transitions between drives, on SQLite and PostgreSQL: each moves a task between
waiting and the dispatch queue in the same transaction as its event; a budget raise that
would not clear the limit that was hit is refused, naming it; a driver that finds its task
still waiting takes it off dispatch unless a reply raced it; the watchdog's query finds
dispatched tasks whose driver went silent."""

import uuid

import pytest

from memory.store import DISPATCHED, PENDING, WAITING, EventStore, NewEvent
from tests.test_store import db_url  # noqa: F401  (the sqlite/postgres fixture)
from troupe.models import EventType, Priority, TaskStatus
from troupe.transitions import BudgetStillExceeded, TaskCancelled, post_message, raise_budget


@pytest.fixture
async def store(db_url):  # noqa: F811
    s = EventStore(db_url)
    await s.migrate()
    yield s
    await s.close()


async def waiting_on_budget(store, llm_calls=3, max_llm_calls=3):
    tid = str(uuid.uuid4())
    await store.create_task(tid, tenant="t", goal="g", priority=Priority.normal,
                            payload={"goal": "g", "budget": {"max_llm_calls": max_llm_calls}})
    epoch = await store.claim(tid)
    await store.append(tid, [NewEvent(EventType.llm_called, {"tokens_in": 1}) for _ in range(llm_calls)] + [
        NewEvent(EventType.status, {"status": "waiting_for_input", "waiting_on": "budget", "resume": "executing"})],
        epoch=epoch)
    return tid, epoch


async def test_a_raise_that_does_not_clear_the_limit_is_refused_and_one_that_does_requeues(store):
    tid, _ = await waiting_on_budget(store)
    with pytest.raises(BudgetStillExceeded) as exc:
        await raise_budget(store, tid, {"max_llm_calls": 3})
    assert exc.value.limit == "max_llm_calls" and exc.value.used == 3 and "max_llm_calls" in str(exc.value)
    assert (await store.get(tid)).dispatch_state == WAITING
    budget = await raise_budget(store, tid, {"max_llm_calls": 10})
    assert budget.max_llm_calls == 10 and (await store.get(tid)).dispatch_state == PENDING


async def test_a_reply_requeues_a_waiting_task_and_a_cancelled_one_refuses(store):
    tid, epoch = await waiting_on_budget(store)
    posted = await post_message(store, tid, "retry")
    assert posted.status == TaskStatus.waiting_for_input and (await store.get(tid)).dispatch_state == PENDING
    await store.append(tid, [NewEvent(EventType.status, {"status": "cancelled"})])
    with pytest.raises(TaskCancelled):
        await post_message(store, tid, "hello")


async def test_a_message_sent_again_with_its_key_is_the_first_not_a_follow_up(store):
    tid, _ = await waiting_on_budget(store)
    first = await post_message(store, tid, "retry", idempotency_key="k1")
    # The task resumes and ends; the client, whose response was lost, sends the reply again.
    await store.append(tid, [NewEvent(EventType.status, {"status": "done"})])
    again = await post_message(store, tid, "retry", idempotency_key="k1")
    assert again.seq == first.seq and not again.follow_up and again.iteration == 1
    events = await store.read(tid)
    assert [e.type for e in events].count(EventType.message) == 1
    assert EventType.iteration_started not in [e.type for e in events]
    other = await post_message(store, tid, "and one more thing", idempotency_key="k2")  # a new key: a follow-up
    assert other.follow_up and other.iteration == 2


async def test_park_yields_to_a_reply_that_raced_the_driver(store):
    tid, _ = await waiting_on_budget(store)
    await post_message(store, tid, "more")
    epoch = await store.claim(tid)
    seen = (await store.get(tid)).last_seq
    await store.append(tid, [NewEvent(EventType.message, {"text": "and now?"})], wake=True)
    assert not await store.park(tid, epoch, seen)  # the driver must read the reply first
    assert (await store.get(tid)).dispatch_state == DISPATCHED
    assert await store.park(tid, epoch, seen + 1)
    assert (await store.get(tid)).dispatch_state == WAITING


async def test_the_watchdog_finds_dispatched_tasks_whose_driver_is_silent(store):
    tid = str(uuid.uuid4())
    await store.create_task(tid, tenant="t", goal="g", priority=Priority.normal, payload={"goal": "g"})
    epoch = await store.claim(tid)
    assert tid not in {r.task_id for r in await store.orphans(60)}  # the lease itself is a beat
    assert tid in {r.task_id for r in await store.orphans(-1)}
    await store.beat({tid: epoch})
    assert tid not in {r.task_id for r in await store.orphans(60)}
