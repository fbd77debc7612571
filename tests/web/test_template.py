"""The research plan template is a valid plan over the web tools, and its web steps run end to end."""

from __future__ import annotations

import re

import tools.builtin  # noqa: F401  (registers write_report)
import tools.web.tools  # noqa: F401  (registers the web tools)
from tools.registry import default_registry
from troupe.models import AcceptanceTest
from troupe.plan_templates import load_template
from troupe.plans import resolve_args, validate_plan


def load(slots):
    doc, plan = load_template("research", slots)
    assert set(doc["slots"]) >= set(slots)
    return doc, plan


def test_template_is_a_valid_plan_over_the_registered_tools(site):
    doc, plan = load({"topic": "zebra7", "sites": [f"{site.url}/docs/"]})
    validate_plan(plan, {name: default_registry.get(name) for name in default_registry.names()})
    assert plan.node("crawl").args["url"] == [f"{site.url}/docs/"] and plan.node("crawl").args["max_pages"] == 30
    assert plan.node("report").args["title"] == "Research: zebra7"
    for test in doc["acceptance_tests"]:
        AcceptanceTest.model_validate(test)


async def test_template_runs_end_to_end_against_the_local_site(make_ctx, site, tmp_path, monkeypatch):
    monkeypatch.delenv("TROUPE_SEARXNG_URL", raising=False)
    doc, plan = load({"topic": "zebra5 token", "sites": [f"{site.url}/docs/"], "max_pages": 10})
    ctx = make_ctx()  # one task: every step shares its browser session
    outputs = {}
    for node in plan.nodes:  # listed in dependency order
        outputs[node.id] = await default_registry.get(node.tool)(ctx, resolve_args(node.args, outputs))
    assert len(outputs["crawl"]["pages"]) == 8  # index + 3 + 4: max_depth 2 bounds it
    assert outputs["search"]["source"] == "local_index"
    assert outputs["read"]["url"].endswith("/docs/p5") and outputs["read"]["evidence"]["screenshot"]
    assert outputs["facts"]["data"]["title"] == "Page 5"
    report = (tmp_path / outputs["report"]["artifact"]).read_text()
    evidence = outputs["read"]["evidence"]
    cited = f"[1] Doc page 5 — {evidence['url']} (fetched {evidence['fetched_at']}, {evidence['content_hash']})"
    assert cited in report
    assert "This is documentation page number 5" in report
    cites = next(t for t in doc["acceptance_tests"] if t["id"] == "cites_its_source")
    assert re.search(cites["params"]["pattern"], report, re.MULTILINE)
