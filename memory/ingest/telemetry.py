"""Ingest spans: `ingest` for a run, with `ingest.plan`, `ingest.parse`, `ingest.embed` and
`ingest.upsert` under it, each with its counts.

Parse, embed and upsert stream into each other (Ray Data parses while the embedding actors
work and the driver writes), so their spans overlap: each runs from the stage's first activity
to its last, and `troupe.ingest.busy_s` says how much of that the driver spent on it (waiting
for a parsed block, submitting to or draining the embedders, writing). Spans are made after the
fact with those timestamps, so timing them costs two clock reads per batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from troupe.tracing import tracer

__all__ = ["Stage", "Stages"]


class Stage:
    """One stage's wall interval, driver time and counters."""

    def __init__(self, name: str):
        self.name = name
        self.start_ns = self.end_ns = 0
        self.busy_ns = 0
        self.counts: dict[str, int] = {}

    @contextmanager
    def active(self) -> Iterator[None]:
        started = time.time_ns()
        try:
            yield
        finally:
            ended = time.time_ns()
            self.start_ns = self.start_ns or started
            self.end_ns = ended
            self.busy_ns += ended - started

    def add(self, **counts: int) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v


class Stages:
    """The streamed stages of one run, reported as children of `parent` when the run ends."""

    def __init__(self) -> None:
        self.parse, self.embed, self.upsert = Stage("parse"), Stage("embed"), Stage("upsert")

    def emit(self, parent: trace.Span, **final: dict[str, Any]) -> None:
        """One span per stage that ran; `final` adds end-of-run attributes per stage name."""
        ctx = trace.set_span_in_context(parent)
        for stage in (self.parse, self.embed, self.upsert):
            if not stage.start_ns:
                continue  # nothing to parse (all unchanged): no stage ran
            attrs: dict[str, Any] = {f"troupe.ingest.{k}": v for k, v in stage.counts.items()}
            attrs.update({f"troupe.ingest.{k}": v for k, v in final.get(stage.name, {}).items()})
            attrs["troupe.ingest.busy_s"] = round(stage.busy_ns / 1e9, 3)
            s = tracer().start_span(f"ingest.{stage.name}", context=ctx, start_time=stage.start_ns, attributes=attrs)
            s.end(end_time=stage.end_ns)
