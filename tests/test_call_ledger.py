"""The idempotency ledger on SQLite and PostgreSQL: a call runs only after claiming its key;
an outcome once kept is returned, never re-run; a side-effecting run in doubt is repeated
only on the user's `retry` of exactly that run; a superseded lease is refused."""

import asyncio
import uuid

import pytest

from memory.call_ledger import CallLedger, CallState, Decision
from memory.store import EventStore, NewEvent
from tests.test_store import db_url  # noqa: F401  (the sqlite/postgres fixture)
from tools.executor import execute_call
from tools.registry import ToolContext, ToolRegistry, ToolUnavailable, tool
from troupe.models import EventType, Priority
from troupe.tool_calls import ToolCall, ToolOutcome


@pytest.fixture
async def ledger(db_url):  # noqa: F811
    store = EventStore(db_url)
    await store.migrate()
    yield CallLedger(store, heartbeat_s=0.2, stale_beats=2)
    await store.close()


async def new_task(store):
    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="t", goal="g", priority=Priority.normal, payload={"goal": "g"})
    return task_id, await store.claim(task_id)


def call(task_id, epoch, **kw):
    return ToolCall(**{"tool": "send", "args": {}, "task_id": task_id, "tenant": "t", "node_id": "n",
                       "idempotency_key": f"{task_id}:1:n", "epoch": epoch, "side_effects": True, **kw})


async def test_an_executed_call_is_replayed_and_a_live_one_is_busy(ledger):
    tid, epoch = await new_task(ledger.store)
    first = await ledger.claim(call(tid, epoch))
    assert first.decision == Decision.run and first.runs == 1
    assert (await ledger.claim(call(tid, epoch))).decision == Decision.busy
    await ledger.finish(call(tid, epoch), first.run_id, ToolOutcome(ok=True, output="sent"))
    again = await ledger.claim(call(tid, epoch, attempt=2))
    assert again.decision == Decision.replay and again.outcome["output"] == "sent" and again.runs == 1


async def test_a_side_effecting_run_in_doubt_needs_the_users_retry_of_that_run(ledger):
    tid, epoch = await new_task(ledger.store)
    first = await ledger.claim(call(tid, epoch))
    await asyncio.sleep(0.5)  # its heartbeat stopped (the process died): stale after 2 beats of 0.2 s
    doubt = await ledger.claim(call(tid, epoch))
    assert doubt.decision == Decision.in_doubt and doubt.runs == 1
    confirmed = await ledger.claim(call(tid, epoch, confirmed_runs=1))
    assert confirmed.decision == Decision.run and confirmed.runs == 2
    await ledger.abandon(call(tid, epoch), confirmed.run_id)  # the confirmed run dies too
    assert (await ledger.claim(call(tid, epoch, confirmed_runs=1))).decision == Decision.in_doubt
    assert (await ledger.claim(call(tid, epoch, side_effects=False))).decision == Decision.run
    del first


async def test_a_superseded_lease_is_refused(ledger):
    tid, epoch = await new_task(ledger.store)
    newer = await ledger.store.claim(tid)
    assert (await ledger.claim(call(tid, epoch))).decision == Decision.fenced
    assert (await ledger.claim(call(tid, newer))).decision == Decision.run


async def test_a_retryable_failure_runs_again_as_a_later_attempt_only(ledger):
    tid, epoch = await new_task(ledger.store)
    first = await ledger.claim(call(tid, epoch))
    await ledger.finish(call(tid, epoch), first.run_id, ToolOutcome.failure("503", retryable=True))
    assert (await ledger.claim(call(tid, epoch))).decision == Decision.replay
    assert (await ledger.claim(call(tid, epoch, attempt=2))).decision == Decision.run


async def test_the_result_event_records_the_outcome_in_the_same_append(ledger):
    tid, epoch = await new_task(ledger.store)
    c = call(tid, epoch)
    claim = await ledger.claim(c)
    [event] = await ledger.store.append(tid, [NewEvent(EventType.tool_result, {
        "node_id": "n", "tool": "send", "idempotency_key": c.idempotency_key, "output": "sent",
        "side_effects": True})], epoch=epoch)
    row = await ledger.get(c.idempotency_key)
    assert row["state"] == CallState.recorded and row["result_seq"] == event.seq and row["outcome"]["ok"]
    await ledger.finish(c, claim.run_id, ToolOutcome(ok=True, output="late"))  # too late to change it
    assert (await ledger.claim(c)).outcome["output"] == "sent"


async def test_a_side_effecting_call_that_could_not_reach_its_server_runs_when_asked_again(ledger, tmp_path):
    """Nothing was sent (ToolUnavailable): the key is given back, not kept as a failure or left in doubt."""
    registry, sent = ToolRegistry(), []

    @tool(side_effects=True, registry=registry)
    async def send(ctx: ToolContext, to: str) -> str:
        """Send a note, once the server is up.

        Args:
            to: who gets it.
        """
        if not sent:
            sent.append(None)  # the first ask finds the server down
            raise ToolUnavailable("mail server could not be reached")
        sent.append(to)
        return f"sent to {to}"

    tid, epoch = await new_task(ledger.store)
    c = call(tid, epoch, args={"to": "ada"})
    down = await execute_call(registry, c, tmp_path, ledger=ledger)
    assert down.unavailable and not down.ok and await ledger.get(c.idempotency_key) is None
    up = await execute_call(registry, c, tmp_path, ledger=ledger)
    assert up.ok and up.output == "sent to ada" and up.runs == 1 and sent == [None, "ada"]
    assert (await execute_call(registry, c, tmp_path, ledger=ledger)).replayed and sent == [None, "ada"]
