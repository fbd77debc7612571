"""The `render_report` tool: HTML and PDF from the built-in templates and from a task's own,
read back with pypdf; it embeds workspace figures and fetches nothing else."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

import tools.builtin  # noqa: F401  (registers the tools)
from tools.registry import ToolContext, ToolError, default_registry

SOURCES = [
    {"n": 1, "url": "http://127.0.0.1/serve/autoscaling", "title": "Serve autoscaling",
     "fetched_at": "2026-12-06T00:00:00Z", "content_hash": "sha256:" + "a" * 64},
    {"n": 2, "url": "http://127.0.0.1/serve/cold-starts", "title": "Cold starts"},
]
EVIDENCE = [
    {"n": 1, "sentence": "Serve adds replicas when the ongoing requests per replica exceed the target.",
     "passage": "Serve adds replicas when the ongoing requests per replica exceed the target, up to max_replicas."},
    {"n": 2, "sentence": "A new replica takes several seconds to start.", "passage": ""},
]
SUMMARY = ("Serve adds replicas when the ongoing requests per replica exceed the target [1]. "
           "A new replica takes several seconds to start [2].")


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path / "ws")


async def render(ctx: ToolContext, **args):
    return await default_registry.get("render_report")(ctx, args)


def pdf_text(path: Path) -> tuple[int, str]:
    reader = PdfReader(path)
    return len(reader.pages), re.sub(r"\s+", " ", " ".join(p.extract_text() for p in reader.pages))


async def test_research_report_cites_every_sentence_and_source(ctx):
    out = await render(ctx, title="Serve autoscaling", template="research", summary=SUMMARY,
                       sections=[{"heading": "Context", "body": "Measured on *one* node <script>x()</script> [1]."}],
                       evidence=EVIDENCE, sources=SOURCES,
                       tables=[{"caption": "Replicas", "columns": ["load", "replicas"], "rows": [[10, 1], [80, 4]]}])
    assert out["artifacts"] == ["report.html", "report.pdf"]
    # A cover with the contents, then one page per chapter: summary, context, tables, evidence, sources.
    pages, text = pdf_text(ctx.workspace / "report.pdf")
    assert pages == out["pages"] == 6
    for e in EVIDENCE:
        assert e["sentence"] in text
    assert "[1] Serve autoscaling — http://127.0.0.1/serve/autoscaling" in text
    assert "[2] Cold starts — http://127.0.0.1/serve/cold-starts" in text
    assert "Contents" in text and "Evidence" in text and "Table 1. Replicas" in text

    html = (ctx.workspace / "report.html").read_text()
    assert html.count('href="#src-1"') >= 3 and 'id="src-2"' in html  # markers link to the source list
    assert "<script>" not in html and "&lt;script&gt;" in html  # section text is escaped, not run


async def test_figures_from_the_workspace_are_embedded(ctx):
    ctx.workspace.mkdir(parents=True)
    Image.new("RGB", (120, 80), (40, 90, 160)).save(ctx.workspace / "chart.png")
    (ctx.workspace / "data.csv").write_text("region,sales\nnorth,10\nsouth,32\n")
    out = await render(ctx, title="Sales", template="data", name="out/sales",
                       tables=[{"caption": "By region", "csv": "data.csv"}],
                       figures=[{"caption": "Sales by region", "image": "chart.png"}])
    assert out["artifacts"] == ["out/sales.html", "out/sales.pdf"]
    reader = PdfReader(ctx.workspace / "out/sales.pdf")
    on_figure_page = [img for p in reader.pages if "Figure 1." in p.extract_text() for img in p.images]
    assert [img.image.size for img in on_figure_page] == [(120, 80)]
    _, text = pdf_text(ctx.workspace / "out/sales.pdf")
    assert "north 10" in text and "south 32" in text and "Figure 1. Sales by region" in text


async def test_a_task_template_runs_sandboxed_and_fetches_nothing(ctx):
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ctx.workspace.mkdir(parents=True)
        url = f"http://127.0.0.1:{server.server_port}"
        (ctx.workspace / "mine.html.j2").write_text(
            '{% extends "base.html.j2" %}{% block contents %}{% endblock %}'
            f'{{% block main %}}<img src="{url}/beacon.png"><link rel="stylesheet" href="{url}/x.css">'
            "<p>{{ summary }}</p>{% endblock %}")
        out = await render(ctx, title="Mine", template="mine.html.j2", summary="Own template [1].",
                           sources=SOURCES[:1])
        _, text = pdf_text(ctx.workspace / "report.pdf")
        assert "Own template [1]." in text and out["pages"] == 2  # the cover, then the body
        assert hits == []  # the report made no request

        (ctx.workspace / "evil.html.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
        with pytest.raises(ToolError, match="failed to render"):
            await render(ctx, title="x", template="evil.html.j2")
    finally:
        server.shutdown()


@pytest.mark.parametrize("args, message", [
    ({"template": "../outside.html.j2"}, "outside|relative"),
    ({"tables": [{"csv": "missing.csv"}]}, "could not be read"),
    ({"figures": [{"image": "notes.txt"}]}, "PNG, JPEG or SVG"),
    ({"name": "report.pdf"}, "without extension"),
    ({"sources": [{"url": "http://x"}]}, "sources.0.n"),
])
async def test_bad_input_says_what_to_fix(ctx, args, message):
    with pytest.raises(ToolError, match=message):
        await render(ctx, title="x", **args)


async def test_document_sources_name_their_file_location_and_id(ctx):
    evidence = [{"n": 1, "sentence": "The notice period is three months.", "doc_id": "0123456789abcdef",
                 "source": "contract.pdf", "location": "page 4"}]
    sources = [{"n": 1, "title": "contract.pdf", "location": "page 4", "doc_id": "0123456789abcdef"}]
    out = await render(ctx, title="Notice period", template="research", summary="The notice period is three "
                       "months. [1]", evidence=evidence, sources=sources, name="answer")
    _, text = pdf_text(ctx.workspace / "answer.pdf")
    assert out["artifacts"] == ["answer.html", "answer.pdf"]
    assert "[1] contract.pdf, page 4 (doc 0123456789abcdef)" in text and "http" not in text
