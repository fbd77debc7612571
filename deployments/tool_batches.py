"""Tool calls to the ToolPool, batched per turn of the Conductor's event loop.

A Serve request costs about 2.5 ms of CPU between caller and replica on a 2-core machine
(the router, the replica's admission message, Ray's actor call and its return), more than
a no-op tool itself. Under load a Conductor issues dozens of calls in one turn of its loop
(one group commit finishes many nodes at once, and each starts the next). Those calls go to
the pool as one streaming request (`ToolPool.call_many`), and outcomes come back as their
calls end, several per message when they end together: a slow call holds up no other. A
lone call goes by itself, as a plain request.

Cancelling: a caller that gives up on an idempotent call (a timeout, a cancelled task, a
superseded lease) cancels its request, as before, once no other wanted call shares that
request. A call cancelled while others in its batch still run is left to end by its own
deadline (the pool gives every call `budget_s`, the caller's timeout), its outcome unread:
running an idempotent call to the end is harmless. A side-effecting call is never cut
short from here: its run finishes and the ledger keeps the outcome for whoever asks next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from troupe.tool_calls import ToolCall, ToolOutcome

__all__ = ["BatchedToolCalls", "CallAnswer", "MAX_BATCH", "run_batch"]

log = logging.getLogger("troupe.tools")  # the pool's side logs

MAX_BATCH = 64
"""Most calls one request carries: bounds a message's size and one replica's share of a burst."""


@dataclass(frozen=True)
class CallAnswer:
    """One call's answer in a batch's stream: its outcome, or why the pool could not give one."""

    index: int
    outcome: ToolOutcome | None = None
    error: str | None = None


@dataclass
class _Call:
    call: ToolCall
    future: asyncio.Future = field(repr=False)
    """Cancelled when its caller gave up before the answer came."""


class _Batch:
    """The calls of one request, and the request once it is sent."""

    def __init__(self, calls: list[_Call]):
        self.calls = calls
        self.response: Any = None
        self.reader: asyncio.Task | None = None

    def abandoned(self) -> bool:
        """Whether every caller has its answer or gave up, one at least gave up, and none of
        those who gave up wait on a side-effecting call (its run must end on its own)."""
        futures = [c.future for c in self.calls]
        return (all(f.done() for f in futures) and any(f.cancelled() for f in futures)
                and not any(c.future.cancelled() and c.call.side_effects for c in self.calls))


class BatchedToolCalls:
    """`call(ToolCall) -> ToolOutcome` for one Conductor replica, over the pool's handle."""

    def __init__(self, pool: Any, *, max_batch: int = MAX_BATCH):
        self.pool = pool
        self.streaming = pool.options(stream=True)  # made once: options() builds a new handle
        self.max_batch = max_batch
        self._queued: list[_Call] = []
        self._readers: set[asyncio.Task] = set()  # held here: the loop keeps only weak references

    async def call(self, call: ToolCall) -> ToolOutcome:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._send)
        item = _Call(call, loop.create_future())
        self._queued.append(item)
        return await item.future  # a caller that gives up cancels its future

    def _send(self) -> None:
        queued, self._queued = [c for c in self._queued if not c.future.done()], []
        for start in range(0, len(queued), self.max_batch):
            batch = _Batch(queued[start:start + self.max_batch])
            try:
                if len(batch.calls) == 1:
                    batch.response = self.pool.call.remote(batch.calls[0].call)
                else:
                    batch.response = self.streaming.call_many.remote([c.call for c in batch.calls])
            except Exception as exc:  # no request went: each caller decides, as for a pool that is gone
                for item in batch.calls:
                    _fail(item, exc)
                continue
            batch.reader = asyncio.create_task(self._read(batch))
            self._readers.add(batch.reader)
            batch.reader.add_done_callback(self._readers.discard)
            for c in batch.calls:
                c.future.add_done_callback(lambda _, b=batch: _cancel_if_abandoned(b))

    @staticmethod
    async def _read(batch: _Batch) -> None:
        try:
            if len(batch.calls) == 1:
                _settle(batch.calls[0], await batch.response)
                return
            async for answers in batch.response:
                for answer in answers:
                    item = batch.calls[answer.index]
                    if answer.outcome is not None:
                        _settle(item, answer.outcome)
                    else:
                        _fail(item, RuntimeError(answer.error or "the tool pool gave no outcome"))
        except Exception as exc:  # the pool's replica died or is unreachable, or we cancelled: each caller decides
            for item in batch.calls:
                _fail(item, exc)
        finally:
            for item in batch.calls:  # a stream that ended short: never leave a caller waiting
                _fail(item, RuntimeError("the tool pool's answer ended without this call's outcome"))


def _cancel_if_abandoned(batch: _Batch) -> None:
    """Once nobody waits for a batch's answers, its request goes, and the pool stops the
    idempotent calls still running."""
    if batch.reader is not None and not batch.reader.done() and batch.abandoned():
        batch.response.cancel()


def _settle(item: _Call, outcome: ToolOutcome) -> None:
    if not item.future.done():
        item.future.set_result(outcome)


def _fail(item: _Call, exc: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(exc)


async def run_batch(run_one: Any, calls: list[ToolCall]) -> AsyncIterator[list[CallAnswer]]:
    """The pool's side of a batch: every call runs at once, and each message carries the answers
    of the calls that ended together. Cancelled (every caller gave up), the idempotent calls
    still running stop; side-effecting ones run to the end, so the ledger keeps their outcome."""
    jobs = {asyncio.ensure_future(run_one(call)): i for i, call in enumerate(calls)}
    pending = set(jobs)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            yield [_answer(jobs[job], job) for job in done]
    finally:
        for job in pending:
            if not calls[jobs[job]].side_effects:
                job.cancel()


def _answer(index: int, job: asyncio.Future) -> CallAnswer:
    if job.cancelled():  # not by us (we cancel only on the way out): its caller decides, as for a lost pool
        return CallAnswer(index, error="the call was cancelled in the tool pool")
    try:
        return CallAnswer(index, outcome=job.result())
    except Exception as exc:  # one call's failure is its own, not the batch's
        log.exception("tool call failed in the pool")
        return CallAnswer(index, error=f"the tool pool failed on this call: {type(exc).__name__}: {exc}"[:2000])
