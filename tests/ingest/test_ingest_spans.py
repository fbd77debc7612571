"""Ingest spans (memory/ingest/telemetry.py) of a real run: `ingest` under the caller's span
(a tool call or an ingest job), its plan, parse, embed and upsert stages under it with the
run's own counts; a second run of the same files parses nothing and only writes its records."""

from __future__ import annotations

import uuid

import pytest

from memory.ingest import FileStatus, ingest
from tests.ingest.corpus import small_config, write_doc
from tests.support.spans import memory_exporter
from troupe.tracing import span

pytestmark = pytest.mark.ray

exporter = None


def setup_module():
    global exporter
    exporter = memory_exporter()


def _files(root):
    write_doc(root / "grant.txt", [("Grant Review", "The annual grant review approved the fund. " * 5),
                                   ("Budget", "The budget for the coming year was set in March. " * 5)])
    write_doc(root / "tender.md", [("Tender Notes", "The local tender missed the target again. " * 5)])
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    return root


def _by_name(spans):
    out = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def test_a_run_is_a_span_with_its_stages_under_the_callers(qdrant_settings, ray_cluster, tmp_path):
    root = _files(tmp_path / "docs")
    task_id = str(uuid.uuid4())
    exporter.clear()
    with span("tool", task_id=task_id, tool="ingest_attachments") as tool_span:
        report = ingest(root, collection="spans", tenant="t-spans", settings=qdrant_settings, config=small_config())
    spans = _by_name(exporter.get_finished_spans())
    [run] = spans["ingest"]
    assert run.parent.span_id == tool_span.context.span_id and run.context.trace_id == uuid.UUID(task_id).int
    a = run.attributes
    assert (a["troupe.tenant"], a["troupe.ingest.collection"], a["troupe.ingest.scope"]) == ("t-spans", "spans", "org")
    assert a["troupe.ingest.files"] == 3 and a["troupe.ingest.files_failed"] == 1 == len(report.failures)
    assert a["troupe.ingest.files_stored"] == report.count(FileStatus.stored) == 2
    assert a["troupe.ingest.chunks_stored"] == report.progress.chunks_stored >= 3
    stages = {name: s for name, [s] in ((n, spans[n]) for n in ("ingest.plan", "ingest.parse", "ingest.embed",
                                                                "ingest.upsert"))}
    for s in stages.values():
        assert s.parent.span_id == run.context.span_id and s.context.trace_id == run.context.trace_id
        assert run.start_time <= s.start_time <= s.end_time <= run.end_time
    assert stages["ingest.plan"].attributes["troupe.ingest.files_to_parse"] == 3
    parse, embed, upsert = (stages[f"ingest.{n}"].attributes for n in ("parse", "embed", "upsert"))
    assert (parse["troupe.ingest.files_parsed"], parse["troupe.ingest.files_failed"]) == (2, 1)
    assert parse["troupe.ingest.blocks"] >= 1 and parse["troupe.ingest.busy_s"] > 0
    assert embed["troupe.ingest.chunks"] == upsert["troupe.ingest.chunks"] == report.progress.chunks_stored
    assert embed["troupe.ingest.batches"] >= 1 and upsert["troupe.ingest.batches"] >= 1
    # The stream's order: parsing starts first; the last write ends after the last embedding.
    assert stages["ingest.parse"].start_time <= stages["ingest.embed"].start_time
    assert stages["ingest.embed"].start_time <= stages["ingest.upsert"].start_time
    assert stages["ingest.embed"].end_time <= stages["ingest.upsert"].end_time

    exporter.clear()
    again = ingest(root, collection="spans", tenant="t-spans", settings=qdrant_settings, config=small_config())
    spans = _by_name(exporter.get_finished_spans())
    assert again.count(FileStatus.unchanged) == 3  # the broken file too: its failure is remembered
    assert sorted(spans) == ["ingest", "ingest.plan", "ingest.upsert"]  # nothing parsed; records written
    assert spans["ingest.plan"][0].attributes["troupe.ingest.files_to_parse"] == 0
    assert spans["ingest.upsert"][0].attributes["troupe.ingest.chunks"] == 0
