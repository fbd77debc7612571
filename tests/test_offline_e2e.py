"""Offline mode end to end over HTTP: for each shipped template, the OfflinePlanner plans a goal
(no model anywhere), the plan is submitted with its acceptance tests, and the task must finish
`done` with a report that holds the right content, cited, and every acceptance test passed
(`citations_supported` included) against pages a local server serves and files the test attaches.

The plans are submitted explicitly (`plan` + `acceptance_tests`) so that this exercises the
templates, tools and checks, whatever the Planner deployment does with goal-only submissions.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pypdf import PdfReader

import tools.builtin  # noqa: F401  (registers the tools)
import tools.documents  # noqa: F401
import tools.web.tools  # noqa: F401
from tools.registry import default_registry
from troupe.offline_planner import OfflinePlan, OfflinePlanner

# Ingestion, a browser and the embedding model all start on first use: slow on a busy machine.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

TOOLS = {name: default_registry.get(name) for name in default_registry.names()}

LIGHTHOUSE = [
    "The Skerryvore lighthouse stands 48 metres tall on a reef off the Scottish coast.",
    "It was completed in 1844 after six years of work by the engineer Alan Stevenson.",
    "Keepers lived in the tower for weeks at a time and kept the lamp burning through every night.",
    "The light was automated in 1972, and the last keepers left the rock that year.",
]
TIDES = [
    "The MeyGen tidal stream project in the Pentland Firth uses underwater turbines to generate electricity.",
    "Tides are predictable decades ahead, which makes tidal power easier to plan for than wind.",
    "Each turbine of the first phase has a rated capacity of 1.5 megawatts.",
    "Marine life around the turbines is monitored with sonar and underwater cameras.",
]


def _page(title: str, paragraphs: list[str], links: str = "") -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>"
            f"<nav><a href='/'>Home</a> <a href='/about'>About</a></nav><main><h1>{title}</h1>{body}{links}</main>"
            f"</body></html>").encode()


PAGES = {
    "/articles/lighthouse.html": _page("Lighthouse keeping", LIGHTHOUSE),
    "/articles/tides.html": _page("Tidal power", TIDES),
    "/site/": _page("Coastal heritage", ["This site collects articles about the heritage of the Scottish coast, "
                                         "from harbours to lighthouses."],
                    "<ul><li><a href='/site/skerryvore'>Skerryvore</a></li><li><a href='/site/harbours'>Harbours"
                    "</a></li></ul>"),
    "/site/skerryvore": _page("Skerryvore", LIGHTHOUSE),
    "/site/harbours": _page("Harbours", ["Stone harbours were built along the coast for the herring fleets of the "
                                         "nineteenth century.", "Many of them still shelter small fishing boats "
                                         "today, though the herring trade has gone."]),
}


@pytest.fixture(scope="module")
def site():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = PAGES.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html; charset=utf-8" if body else "text/plain")
            body = body or b"not found"
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def planner() -> OfflinePlanner:
    return OfflinePlanner()


def submission(goal: str, planned: OfflinePlan) -> dict:
    return {"goal": goal, "plan": planned.plan.model_dump(mode="json"),
            "acceptance_tests": [t.model_dump(mode="json") for t in planned.acceptance_tests]}


def finish(client, task_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("done", "failed", "cancelled", "waiting_for_input"):
            return task
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout_s:g} s")


def run(app, body: dict, files: list | None = None) -> tuple[dict, object]:
    with app.client(timeout=60) as c:
        if files is None:
            r = c.post("/v1/tasks", json=body)
        else:
            r = c.post("/v1/tasks", data={"task": json.dumps(body)}, files=files)
        assert r.status_code == 202, r.text
        task = finish(c, r.json()["task_id"])
        assert task["status"] == "done", (task["status"], task.get("reason"), task.get("verdicts"))
        assert task["verdicts"] and all(v["passed"] for v in task["verdicts"]), task["verdicts"]
        return task, c


def artifact(app, task_id: str, name: str) -> str:
    with app.client() as c:
        r = c.get(f"/v1/tasks/{task_id}/artifacts/{name}")
        assert r.status_code == 200, r.text
        return r.text


def pdf_text(app, task_id: str, name: str) -> str:
    """A PDF artifact's text, whitespace collapsed (lines break anywhere a layout puts them)."""
    with app.client() as c:
        r = c.get(f"/v1/tasks/{task_id}/artifacts/{name}")
        assert r.status_code == 200, r.text
    return re.sub(r"\s+", " ", " ".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages))


def citations_verdict(task: dict) -> str:
    [verdict] = [v for v in task["verdicts"] if v["test_id"] == "citations"]
    return verdict["reason"]


def test_fetch_and_summarize_given_urls(troupe_app, site, planner):
    a, b = f"{site}/articles/lighthouse.html", f"{site}/articles/tides.html"
    goal = f"Summarize {a} and {b} for me, with sources"
    planned = planner.plan(goal, tools=TOOLS)
    assert planned.template == "summarize_urls" and planned.slots["urls"] == [a, b]

    task, _ = run(troupe_app, submission(goal, planned))
    summary = artifact(troupe_app, task["id"], "summary.md")
    assert "each supported by its source" in citations_verdict(task)
    body, sources = summary.split("## Sources", 1)
    assert "## Lighthouse keeping" in body and "## Tidal power" in body
    for sentence in [*LIGHTHOUSE, *TIDES]:  # whatever it quotes, it quotes exactly, with the page's marker
        n = 1 if sentence in LIGHTHOUSE else 2
        if sentence[:-1] in body:
            assert f"{sentence[:-1]} [{n}]." in body
    assert sum(s[:-1] in body for s in LIGHTHOUSE) >= 2 and sum(s[:-1] in body for s in TIDES) >= 2
    assert re.search(rf"^\[1\] Lighthouse keeping — {re.escape(a)} \(fetched \S+, sha256:[0-9a-f]{{64}}\)$",
                     sources, re.MULTILINE), sources
    assert re.search(rf"^\[2\] Tidal power — {re.escape(b)} \(fetched \S+, sha256:[0-9a-f]{{64}}\)$",
                     sources, re.MULTILINE), sources


def test_run_given_python_and_report_its_output(troupe_app, planner):
    goal = "Run this Python code and tell me what it prints:\n```python\nprint(sum(i * i for i in range(1001)))\n```"
    planned = planner.plan(goal, tools=TOOLS)
    assert planned.template == "run_python"

    task, _ = run(troupe_app, submission(goal, planned))
    report = artifact(troupe_app, task["id"], "output.md")
    assert "print(sum(i * i for i in range(1001)))" in report
    assert re.search(r"## Output\n\n~~~~text\n333833500\n", report), report


def test_answer_a_question_from_the_tasks_files(troupe_app, planner):
    goal = "According to the attached notes, when was the Skerryvore light automated?"
    planned = planner.plan(goal, tools=TOOLS, has_attachments=True)
    assert planned.template == "answer_from_files"
    notes = ("# Notes on Skerryvore\n\n" + " ".join(LIGHTHOUSE) + "\n\n# Notes on tides\n\n" + " ".join(TIDES)).encode()
    other = b"Minutes of the harbour board. The board met in March and approved the new pier lights."

    task, _ = run(troupe_app, submission(goal, planned),
                  files=[("files", ("notes.md", notes, "text/markdown")),
                         ("files", ("minutes.txt", other, "text/plain"))])
    answer = artifact(troupe_app, task["id"], "answer.md")
    assert "The light was automated in 1972, and the last keepers left the rock that year. [" in answer
    assert re.search(r"^\[\d\] notes\.md, .+ \(doc [0-9a-f]{16}\)$", answer, re.MULTILINE), answer
    text = pdf_text(troupe_app, task["id"], "answer.pdf")  # the same answer, published as PDF
    assert "The light was automated in 1972, and the last keepers left the rock that year." in text
    assert re.search(r"\[1\] notes\.md, .+ \(doc [0-9a-f]{16}\)", text), text
    assert "each supported by its source" in citations_verdict(task)


def test_research_a_topic_across_a_given_site(troupe_app, site, planner):
    goal = f"Research the Skerryvore lighthouse on {site}/site/"
    planned = planner.plan(goal, tools=TOOLS)
    assert planned.template == "research"
    assert planned.slots == {"topic": "Skerryvore lighthouse", "sites": [f"{site}/site/"]}

    task, _ = run(troupe_app, submission(goal, planned))
    report = artifact(troupe_app, task["id"], "research.md")
    summary = report.split("## Summary", 1)[1].split("## From the most relevant page", 1)[0]
    assert "Skerryvore lighthouse stands 48 metres tall" in summary and "[1]" in summary
    # The browser pool's local index is per process, so the lighthouse article an earlier test read
    # on this host may rank first: either page holds the text.
    here = re.escape(site)
    page = rf"(Skerryvore — {here}/site/skerryvore|Lighthouse keeping — {here}/articles/lighthouse\.html)"
    assert re.search(rf"^\[1\] {page} \(fetched \S+, sha256:[0-9a-f]{{64}}\)$", report, re.MULTILINE), report
    assert "each supported by its source" in citations_verdict(task)
    text = pdf_text(troupe_app, task["id"], "research.pdf")  # the same report as PDF, its source numbered
    assert "Skerryvore lighthouse stands 48 metres tall" in text and re.search(rf"\[1\] {page}", text), text


def test_a_goal_alone_is_planned_offline(troupe_app):
    """No plan submitted: the Planner deployment, with no model configured, plans from a template."""
    goal = "Execute `print(6 * 7)` in Python and report the output"
    task, _ = run(troupe_app, {"goal": goal})
    assert task["plan_source"] == "template:run_python" and set(task["nodes"]) == {"run", "report"}
    assert re.search(r"## Output\n\n~~~~text\n42\n", artifact(troupe_app, task["id"], "output.md"))
