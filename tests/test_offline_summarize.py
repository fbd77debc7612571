"""The extractive writer (`summarize` tool): cited, deterministic, built from what was fetched."""

from __future__ import annotations

import re

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools.builtin.summarize import summarize_pages
from tools.registry import ToolContext, ToolError, default_registry
from troupe.text import markdown_to_plain, split_sentences

HASH = "sha256:" + "a" * 64

AUTOSCALING = {  # a crawl page: the browser's Markdown, with evidence
    "url": "http://127.0.0.1:9/autoscaling", "title": "Autoscaling", "depth": 0, "status": 200,
    "text": "# Autoscaling\n\nServe autoscaling changes the number of replicas of a deployment with its load. "
            "The autoscaler watches the ongoing requests of every replica.[3]\n\n- [Home](http://127.0.0.1:9/)\n"
            "- Docs\n\nWhen traffic grows, **Serve** adds replicas up to `max_replicas`. When traffic falls, "
            "replicas are removed after a downscale delay of 600 seconds.\n\n| a | b |\n| --- | --- |\n\n"
            "```\nserve run config.yaml\n```\n",
    "evidence": {"url": "http://127.0.0.1:9/autoscaling", "title": "Autoscaling",
                 "fetched_at": "2025-01-02T03:04:05+00:00", "content_hash": HASH},
}
PRICING = {  # an http_fetch output
    "url": "http://127.0.0.1:9/pricing", "final_url": "http://127.0.0.1:9/pricing", "status": 200,
    "title": "Pricing", "sha256": "b" * 64,
    "text": "Pricing\nThe basic plan costs 20 dollars per month for small teams. The pro plan costs 50 dollars "
            "per month and includes priority support. Enterprise customers get custom pricing and dedicated "
            "support engineers.",
}


def test_every_sentence_is_quoted_from_its_page_and_cited():
    out = summarize_pages([AUTOSCALING, PRICING], max_sentences=4)
    assert [s["n"] for s in out["sources"]] == [1, 2]
    texts = {1: markdown_to_plain(AUTOSCALING["text"]), 2: PRICING["text"]}
    for e in out["evidence"]:
        assert e["sentence"] in " ".join(texts[e["n"]].split()) or e["sentence"] in texts[e["n"]]
        assert e["sentence"] in e["passage"]
        marked = re.sub(r"([.!?])$", rf" [{e['n']}]\1", e["sentence"])
        assert marked in out["markdown"]
    assert {e["n"] for e in out["evidence"]} == {1, 2}  # every page gets a say
    assert "## Autoscaling" in out["markdown"] and "## Pricing" in out["markdown"]
    sources = out["markdown"].split("## Sources\n\n", 1)[1].splitlines()
    assert sources == [f"[1] Autoscaling — http://127.0.0.1:9/autoscaling (fetched 2025-01-02T03:04:05+00:00, {HASH})",
                       f"[2] Pricing — http://127.0.0.1:9/pricing (sha256:{'b' * 64})"]
    # The page's own footnote marker, links, emphasis, code, tables and menus never reach the summary.
    assert "[3]" not in out["body"] and "**" not in out["body"] and "|" not in out["body"]
    assert "Home" not in out["body"] and "serve run" not in out["body"]


def test_deterministic():
    assert summarize_pages([AUTOSCALING, PRICING]) == summarize_pages([AUTOSCALING, PRICING])


def test_focus_picks_the_sentences_about_it():
    out = summarize_pages([AUTOSCALING, PRICING], focus="downscale delay", max_sentences=1)
    assert [e["sentence"] for e in out["evidence"]] == [
        "When traffic falls, replicas are removed after a downscale delay of 600 seconds."]
    assert out["sources"] == [{"n": 1, "url": AUTOSCALING["url"], "title": "Autoscaling",
                               "fetched_at": "2025-01-02T03:04:05+00:00", "content_hash": HASH}]
    assert "## Autoscaling" not in out["markdown"]  # one page: the Sources list names it


def test_near_repeats_are_dropped_and_empty_pages_reported():
    page = {"url": "http://h/x", "title": "X", "text": "The blue whale is the largest animal ever known to exist. "
            "The blue whale is the largest animal known to have ever existed. Whales breathe air through blowholes "
            "on top of their heads."}
    empty = {"url": "http://h/empty", "title": "Empty", "text": ""}
    out = summarize_pages([page, empty], max_sentences=3)
    assert len(out["evidence"]) == 2
    assert out["skipped"] == [{"url": "http://h/empty", "reason": "no readable sentences"}]
    nothing = summarize_pages([empty])
    assert nothing["evidence"] == [] and "no sentences" in nothing["markdown"] and "Sources" not in nothing["markdown"]


def test_split_sentences_keeps_markers_and_abbreviations():
    assert split_sentences("Claim one. [1] Claim two [2]. Use e.g. this one. J. Smith agreed! Done?") == [
        "Claim one. [1]", "Claim two [2].", "Use e.g. this one.", "J. Smith agreed!", "Done?"]


async def test_the_tool_takes_one_page_or_many(tmp_path):
    ctx = ToolContext(task_id="t", tenant="default", node_id="n", idempotency_key="k", workspace=tmp_path)
    tool = default_registry.get("summarize")
    one = await tool(ctx, {"pages": PRICING})
    many = await tool(ctx, {"pages": [PRICING], "max_sentences": 8})
    assert one == many and one["sources"][0]["url"] == PRICING["url"]
    with pytest.raises(ToolError, match="has no url"):
        await tool(ctx, {"pages": [{"text": "Some text without a source anywhere to cite."}]})
