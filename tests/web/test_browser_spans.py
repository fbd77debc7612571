"""Browser spans (tools/web/telemetry.py) around a real Chromium: one per operation, a child of
the tool span whose carrier came with the call, naming the page's host and status, never its
URL; a failed operation is an error span that does not quote the URL either.

The BrowserPool deployment wraps every operation this way; tests/test_tracing_otlp.py sees it
across processes."""

from __future__ import annotations

import uuid

import pytest

from tests.support.spans import memory_exporter
from tools.registry import ToolError
from tools.web.telemetry import traced_op
from troupe.tracing import carrier, span

exporter = None
SECRET = f"tok-{uuid.uuid4().hex}"


def setup_module():
    global exporter
    exporter = memory_exporter()


async def _op(pool, op: str, task_id: str, *args, trace, **kwargs):
    return await traced_op(lambda: getattr(pool, op)(task_id, *args, **kwargs), op, task_id, args, kwargs,
                           trace=trace)


def _text(s) -> str:
    """Everything a span carries out of the process, as one string."""
    return " ".join([s.name, str(dict(s.attributes)), str(s.status.description),
                     *(f"{e.name} {dict(e.attributes)}" for e in s.events)])


async def test_an_operation_is_a_span_under_its_tool_call(pool, site):
    task_id = str(uuid.uuid4())
    exporter.clear()
    with span("tool", task_id=task_id, tool="browse") as tool_span:
        trace = carrier()
    page = await _op(pool, "browse", task_id, f"{site.url}/docs/p1?token={SECRET}", tenant="t1", settle_s=0,
                     trace=trace)
    await _op(pool, "click", task_id, "a", tenant="t1", settle_s=0, trace=trace)
    browse, click = [s for s in exporter.get_finished_spans() if s.name.startswith("browser.")]
    assert (browse.name, click.name) == ("browser.browse", "browser.click")
    for s in (browse, click):
        assert s.context.trace_id == tool_span.context.trace_id == uuid.UUID(task_id).int
        assert s.parent.span_id == tool_span.context.span_id
        assert s.attributes["troupe.task_id"] == task_id and s.attributes["troupe.tenant"] == "t1"
        assert s.attributes["server.address"] == "127.0.0.1" and s.attributes["http.response.status_code"] == 200
        assert s.status.is_ok and s.end_time > s.start_time
        assert SECRET not in _text(s)
    assert page["status"] == 200 and browse.attributes["troupe.browser.new_session"] is True
    assert click.attributes["troupe.browser.new_session"] is False
    assert browse.attributes["troupe.browser.bytes"] == page["bytes"] > 0
    await pool.release(task_id)


async def test_without_a_carrier_the_span_joins_its_task_trace(pool, site):
    task_id = str(uuid.uuid4())
    exporter.clear()
    await _op(pool, "crawl", task_id, f"{site.url}/docs/p0", tenant="t1", max_pages=3, trace=None)
    [s] = [s for s in exporter.get_finished_spans() if s.name == "browser.crawl"]
    assert s.context.trace_id == uuid.UUID(task_id).int
    assert s.attributes["troupe.browser.pages"] == 3
    await pool.release(task_id)


async def test_a_failed_operation_is_an_error_span_without_the_url(pool, refused_site):
    task_id = str(uuid.uuid4())
    exporter.clear()
    with pytest.raises(ToolError) as failed:  # 127.0.0.2 is outside the test egress policy
        await _op(pool, "browse", task_id, f"{refused_site.url}/?token={SECRET}", tenant="t1", settle_s=0,
                  trace=None)
    assert SECRET in str(failed.value)  # the tool's own error may quote it; the span may not
    [s] = [s for s in exporter.get_finished_spans() if s.name == "browser.browse"]
    assert not s.status.is_ok and s.attributes["error.type"] == type(failed.value).__name__
    assert s.attributes["server.address"] == "127.0.0.2"
    assert SECRET not in _text(s) and "http.response.status_code" not in s.attributes
    await pool.release(task_id)
