"""JSON log lines (TROUPE_LOG_FORMAT=json): each record a driver makes while it drives a task
carries the task's id, tenant and trace id."""

import io
import json
import logging

import pytest

from memory.store import EventStore
from tests.test_agents_runner import Harness
from troupe.logs import setup_logging, task_context
from troupe.runner import TaskRunner
from troupe.tracing import task_trace_id


@pytest.fixture
def json_lines(monkeypatch):
    monkeypatch.setenv("TROUPE_LOG_FORMAT", "json")
    logger = logging.getLogger("troupe")
    before = (list(logger.handlers), logger.propagate, logger.level)
    out = io.StringIO()
    setup_logging(out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    logger.handlers, logger.propagate, logger.level = before


def test_text_logs_stay_the_default(monkeypatch):
    monkeypatch.delenv("TROUPE_LOG_FORMAT", raising=False)
    assert setup_logging(io.StringIO()) is None


def test_a_record_made_within_a_task_carries_its_fields(json_lines):
    task_id = "2f1c2f9e-5a51-4d0b-9d4a-3b8e6a2e1c11"
    with task_context(task_id, "acme"):
        logging.getLogger("troupe.runner").warning("node %s failed", "a")
    logging.getLogger("troupe.gateway").info("no task here")
    lines = {r["message"]: r for r in json_lines()}  # other tests' leftovers may log meanwhile
    inside, outside = lines["node a failed"], lines["no task here"]
    assert inside == {"ts": inside["ts"], "level": "WARNING", "logger": "troupe.runner", "message": "node a failed",
                      "task_id": task_id, "tenant": "acme", "trace_id": task_trace_id(task_id)}
    assert outside["message"] == "no task here" and "task_id" not in outside


class _ForgetfulPlanner:
    async def learn(self, task):
        raise RuntimeError("the templates table is gone")


async def test_the_driver_logs_with_its_task(json_lines, tmp_path):
    store = EventStore(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    await store.migrate()
    h = Harness(store, tmp_path)
    task_id = await h.submit(plan=[{"id": "w", "tool": "write_text", "args": {"name": "a.md", "text": "a"}}])
    epoch = await store.claim(task_id, from_states=("pending",))
    runner = TaskRunner(store, h.call_tool, h.tools, h.workspace, task_id, epoch, poll_s=0.05,
                        planner=_ForgetfulPlanner())
    assert await runner.drive() == "done"
    await store.close()
    [line] = [r for r in json_lines() if "learned template" in r["message"]]
    assert line["task_id"] == task_id and line["tenant"] == "default" and line["trace_id"] == task_trace_id(task_id)
    assert "the templates table is gone" in line["exc_info"]
