"""OpenTelemetry: one trace per task across processes, exported only when OTEL_* says so.

The trace id is derived from the task id, so every process that touches a task (each
Conductor that resumes it, every tool-pool replica) joins the same trace without having
to pass it along first; span context still rides along handle calls in a W3C carrier
so that tool spans nest under their node span.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

__all__ = ["carrier", "setup_tracing", "span", "task_carrier", "task_trace_id", "tracer"]

_configured = False


def setup_tracing(service_name: str) -> None:
    """This process's telemetry: JSON log lines when TROUPE_LOG_FORMAT=json (troupe/logs.py),
    and an SDK tracer provider when an exporter is configured through OTEL_* vars."""
    global _configured
    if _configured:
        return
    _configured = True
    from troupe.logs import setup_logging

    setup_logging()
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if exporter in ("", "none") and not endpoint:
        return  # off by default: the API's no-op tracer costs next to nothing
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer() -> trace.Tracer:
    return trace.get_tracer("troupe")


def task_trace_id(task_id: str) -> str:
    """32 hex digits; task ids are UUIDs, others are hashed into one."""
    try:
        return uuid.UUID(task_id).hex
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, task_id).hex


def _task_parent(task_id: str) -> otel_context.Context:
    parent = SpanContext(
        trace_id=int(task_trace_id(task_id), 16),
        span_id=random.getrandbits(64) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _task_context(task_id: str) -> otel_context.Context | None:
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == int(task_trace_id(task_id), 16):
        return None  # the current context: nest under the span already open for this task
    return _task_parent(task_id)


def _off() -> bool:
    """Whether no tracer provider is installed (tracing is off, the default): spans would record nothing."""
    return isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextmanager
def span(name: str, *, task_id: str | None = None, parent: dict[str, str] | None = None,
         record_exception: bool = True, **attributes: Any) -> Iterator[trace.Span]:
    """A span under the carrier `parent` if given, else in the task's own trace (under the current
    span when that one is of the same task: a node under its task), else under the current span
    (or a new trace). `record_exception=False` for callers whose errors may quote what must not
    leave the process (a URL's query); they set the status themselves."""
    if _off():  # a no-op span cost 23 us of context juggling, 5% of a loaded Conductor's CPU
        yield trace.INVALID_SPAN
        return
    ctx = extract(parent) if parent else (_task_context(task_id) if task_id else None)
    attrs = {k: v for k, v in attributes.items() if v is not None}
    if task_id:
        attrs["troupe.task_id"] = task_id
    with tracer().start_as_current_span(name, context=ctx, attributes=attrs, record_exception=record_exception,
                                        set_status_on_exception=record_exception) as s:
        yield s


def carrier() -> dict[str, str]:
    """The current span context as W3C headers, to send along a handle call."""
    out: dict[str, str] = {}
    inject(out)
    return out


def task_carrier(task_id: str) -> dict[str, str] | None:
    """The current span as W3C headers when it is one of the task's (a node or agent span), so
    that work done for the task in another process nests under it; None anywhere else."""
    current = trace.get_current_span().get_span_context()
    if not current.is_valid or current.trace_id != int(task_trace_id(task_id), 16):
        return None
    return carrier()
