"""One task is one trace: task, node and tool spans share the trace id derived from the
task id; nodes nest under the task span, and tool spans under their node span through the
carrier sent with the call."""

import uuid

from tests.support.spans import memory_exporter
from tests.test_runner import h, step  # noqa: F401  (fixture)

exporter = None


def setup_module():
    global exporter
    exporter = memory_exporter()


async def test_one_trace_per_task(h):  # noqa: F811
    task_id = await h.submit([step("a", "A"), step("b", "B", deps=["a"])])
    exporter.clear()
    assert await h.drive(task_id) == "done"
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == ["node", "node", "task", "tool", "tool"]
    assert {s.context.trace_id for s in spans} == {uuid.UUID(task_id).int}
    nodes = {s.context.span_id: s for s in spans if s.name == "node"}
    [task] = [s for s in spans if s.name == "task"]
    assert all(n.parent.span_id == task.context.span_id for n in nodes.values())  # nodes nest under their task
    for tool_span in (s for s in spans if s.name == "tool"):
        assert tool_span.parent.span_id in nodes
        assert tool_span.attributes["troupe.task_id"] == task_id
    events = await h.store.read(task_id)
    assert {e.trace_id for e in events[1:]} == {uuid.UUID(task_id).hex}
