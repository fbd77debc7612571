"""The `render_report` tool: a report as HTML and PDF, from a Jinja2 template and data.

Built-in templates (tools/builtin/report_templates/): `brief`, `research` (summary with
numbered citations linked to the evidence they stand on, and a source list) and `data`
(tables and figures first). A task may bring its own template from its workspace; it runs in
Jinja's sandbox and may extend `base.html.j2`. Text fields are Markdown, rendered without
raw HTML. The PDF is rendered by WeasyPrint, which may read only files inside the task's
workspace (figures): a report never makes a network request.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from pydantic import BaseModel, Field, ValidationError

from tools.builtin.files import write_atomically
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import check_base_name, resolve_inside
from troupe.markdown import render_markdown
from troupe.text import CITATION

__all__ = ["render_report", "ReportData"]

TEMPLATES = Path(__file__).with_name("report_templates")
BUILT_IN = ("brief", "research", "data")
MAX_TABLE_ROWS = 500


class Source(BaseModel):
    """A web page (url, fetched_at, content_hash) or a document (doc_id, location)."""
    n: int
    url: str | None = None
    title: str = ""
    location: str | None = None
    doc_id: str | None = None
    fetched_at: str | None = None
    content_hash: str | None = None


class Evidence(BaseModel):
    n: int = Field(description="The number of the source it comes from.")
    sentence: str
    passage: str = ""


class Section(BaseModel):
    heading: str
    body: str = Field("", description="Markdown; [n] markers cite source n.")


class Table(BaseModel):
    caption: str = ""
    columns: list[str] = []
    rows: list[list[Any]] = []
    csv: str | None = Field(None, description="A CSV file in the workspace, instead of columns and rows.")


class Figure(BaseModel):
    caption: str = ""
    image: str = Field(description="A PNG, JPEG or SVG file in the workspace.")


class ReportData(BaseModel):
    summary: str = ""
    sections: list[Section] = []
    evidence: list[Evidence] = []
    sources: list[Source] = []
    tables: list[Table] = []
    figures: list[Figure] = []


def _cite(html: str, known: set[int]) -> Markup:
    """Turn `[n]` markers of known sources into links to the source list."""
    def link(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return f'<a class="cite" href="#src-{n}">[{n}]</a>' if n in known else m.group(0)
    return Markup(CITATION.sub(link, html))


def _load_table(root: Path, table: Table) -> dict[str, Any]:
    columns, rows = table.columns, table.rows
    if table.csv is not None:
        path = resolve_inside(root, table.csv)
        try:
            with path.open(newline="", encoding="utf-8") as f:
                read = list(csv.reader(f))
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolError(f"table {table.csv!r} could not be read as UTF-8 CSV: {exc}") from None
        columns, rows = (read[0], read[1:]) if read else ([], [])
    shown = rows[:MAX_TABLE_ROWS]
    return {"caption": table.caption, "columns": columns, "rows": shown,
            "omitted": len(rows) - len(shown)}


def _figure(root: Path, figure: Figure) -> dict[str, Any]:
    path = resolve_inside(root, figure.image)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".svg") or not path.is_file():
        raise ToolError(f"figure {figure.image!r} must be a PNG, JPEG or SVG file in the workspace")
    return {"caption": figure.caption, "src": path.as_uri()}


def _fetcher(root: Path) -> Any:
    """WeasyPrint may read workspace files (and the stylesheet) and nothing else: no network."""
    from weasyprint.urls import URLFetcher

    allowed = (root, TEMPLATES.resolve())

    class WorkspaceFetcher(URLFetcher):
        def fetch(self, url: str, headers: Any = None) -> Any:
            path = Path(unquote(urlparse(url).path)).resolve()
            if url.startswith("file://") and any(path.is_relative_to(a) for a in allowed):
                return super().fetch(url, headers)
            raise ValueError(f"a report may only embed files from its workspace, not {url}")

    return WorkspaceFetcher(allowed_protocols={"file"})


def _environment(root: Path) -> SandboxedEnvironment:
    env = SandboxedEnvironment(loader=ChoiceLoader([FileSystemLoader(TEMPLATES), FileSystemLoader(root)]),
                               autoescape=True, undefined=StrictUndefined)
    env.filters["markdown"] = lambda text: Markup(render_markdown(text or ""))
    return env


def _render(root: Path, title: str, template: str, data: ReportData) -> str:
    known = {s.n for s in data.sources}
    cite = lambda text: _cite(render_markdown(text or ""), known)  # noqa: E731
    name = f"{template}.html.j2" if template in BUILT_IN else template
    if template not in BUILT_IN:
        resolve_inside(root, template)  # refuses paths outside the workspace
    try:
        tpl = _environment(root).get_template(name)
        return tpl.render(
            title=title, summary=cite(data.summary),
            sections=[{"heading": s.heading, "id": f"s{i}", "body": cite(s.body)}
                      for i, s in enumerate(data.sections, start=1)],
            evidence=[{**e.model_dump(), "source": next((s for s in data.sources if s.n == e.n), None)}
                      for e in data.evidence],
            sources=data.sources, tables=[_load_table(root, t) for t in data.tables],
            figures=[_figure(root, f) for f in data.figures],
            stylesheet=(TEMPLATES / "report.css").as_uri())
    except TemplateError as exc:
        raise ToolError(f"template {template!r} failed to render: {exc}; built-in templates are "
                        f"{', '.join(BUILT_IN)}, or pass a .html.j2 file from the workspace") from None


@tool
async def render_report(
    ctx: ToolContext,
    title: str,
    template: str = "brief",
    summary: str = "",
    sections: list[dict[str, Any]] | None = None,
    evidence: list[dict[str, Any]] | None = None,
    sources: list[dict[str, Any]] | None = None,
    tables: list[dict[str, Any]] | None = None,
    figures: list[dict[str, Any]] | None = None,
    name: str = "report",
    formats: list[Literal["html", "pdf"]] | None = None,
) -> dict[str, Any]:
    """Render a report to HTML and PDF in the task workspace (table of contents, figures,
    tables, numbered citations linked to their evidence and sources).

    Args:
        title: The report's title.
        template: 'brief', 'research' or 'data', or a Jinja2 .html.j2 file in the workspace.
        summary: Markdown; [n] cites source n.
        sections: [{heading, body}] with Markdown bodies.
        evidence: [{n, sentence, passage}]: what each cited source says (e.g. summarize's evidence).
        sources: [{n, url, title, fetched_at, content_hash}] for pages (e.g. summarize's sources),
            [{n, title, location, doc_id}] for documents (e.g. extract_evidence's sources).
        tables: [{caption, columns, rows}] or [{caption, csv}] with a CSV file in the workspace.
        figures: [{caption, image}] with a PNG, JPEG or SVG file in the workspace.
        name: File name without extension: writes NAME.html and NAME.pdf.
        formats: Which files to write; both by default.
    """
    try:
        data = ReportData(summary=summary, sections=sections or [], evidence=evidence or [],
                          sources=sources or [], tables=tables or [], figures=figures or [])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ToolError(f"report data is not valid: {problems}") from None
    check_base_name(name, (".html", ".pdf"), "report")
    wanted = formats or ["html", "pdf"]

    def write() -> dict[str, Any]:
        ctx.workspace.mkdir(parents=True, exist_ok=True)
        root = ctx.workspace.resolve()
        html = _render(root, title, template, data)
        written: dict[str, bytes] = {}
        if "html" in wanted:
            written[f"{name}.html"] = html.encode("utf-8")
        pages = None
        if "pdf" in wanted:
            from weasyprint import HTML

            document = HTML(string=html, base_url=root.as_uri() + "/", url_fetcher=_fetcher(root)).render()
            pages = len(document.pages)
            written[f"{name}.pdf"] = document.write_pdf()
        for rel, payload in written.items():
            write_atomically(resolve_inside(root, rel), payload)
        return {"artifacts": list(written), "artifact": list(written)[-1], "pages": pages,
                "sha256": {rel: hashlib.sha256(b).hexdigest() for rel, b in written.items()}}

    try:
        return await asyncio.to_thread(write)
    except OSError as exc:
        raise ToolError(f"could not write report {name!r}: {exc.strerror or exc}") from None

