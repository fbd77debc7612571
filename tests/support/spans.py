"""Finished spans of this test process, in memory.

OpenTelemetry lets a process set its global tracer provider once; a second
`set_tracer_provider` is ignored with a warning. So every test module that reads spans
attaches its exporter to the one SDK provider, whichever module installed it first."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def memory_exporter() -> InMemorySpanExporter:
    """A new exporter that receives every span this process finishes from now on."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), f"a non-SDK tracer provider is installed: {provider!r}"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
