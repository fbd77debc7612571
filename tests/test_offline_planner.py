"""Offline planning: template matching by embedding similarity, slot filling, learned templates.

Held-out goals (worded unlike any template example) give the evidence for MATCH_THRESHOLD:
they must pick their template, and unrelated goals must not get a plan.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import tools.builtin  # noqa: F401  (registers the tools)
import tools.documents  # noqa: F401
import tools.extraction  # noqa: F401
import tools.web.tools  # noqa: F401
from tools.registry import default_registry
from troupe.models import Plan
from troupe.offline_planner import (
    CONFIGURE_MODEL,
    MATCH_THRESHOLD,
    GoalFacts,
    LearnedTemplate,
    NoTemplate,
    OfflinePlanner,
    list_templates,
)
from troupe.plan_templates import TEMPLATES, load_template

TOOLS = {name: default_registry.get(name) for name in default_registry.names()}
NAMES = ["analyse_dataset", "answer_from_collection", "answer_from_files", "extract_from_collection", "research",
         "run_python", "summarize_urls"]
WITH_FILES = {"answer_from_files", "analyse_dataset"}


@pytest.fixture(scope="module")
def planner() -> OfflinePlanner:
    return OfflinePlanner()


def examples():
    for name in NAMES:
        doc = yaml.safe_load((TEMPLATES / f"{name}.yaml").read_text())
        for goal in doc["examples"]:
            yield pytest.param(name, goal, id=f"{name}:{goal[:40]}")


@pytest.mark.parametrize(("name", "goal"), list(examples()))
def test_each_example_goal_picks_its_template_and_fills_its_slots(planner, name, goal):
    result = planner.plan(goal, tools=TOOLS, has_attachments=name in WITH_FILES)
    assert result.template == name and result.source == f"template:{name}"
    assert result.score > 0.99  # an example is its own best match
    # The plan is the template's with the slots filled: load_template gives the same.
    _, plan = load_template(name, result.slots)
    assert plan == result.plan


HELD_OUT = {
    "summarize_urls": [
        "Can you summarise the article at https://blog.example.net/2024/ray?",
        "Give me the gist of https://en.wikipedia.org/wiki/Ray",
        "Please read http://127.0.0.1:8000/a.html and http://127.0.0.1:8000/b.html and summarize them",
        "What is this article about? https://example.com/news/1",
        "Briefly, what do https://a.com/x and https://b.org/y say?",
    ],
    "run_python": [
        "What does `sum(range(101))` give?",
        "Execute the following and show the output:\n```python\nprint('hi')\n```",
        "Can you run `print(3 * 7)` for me?",
        "python: print(list(range(5)))",
    ],
    "analyse_dataset": [
        "Analyse the attached data and chart it",
        "Profile this CSV and give me charts of its numbers",
        "Make a report with charts from the spreadsheet I attached",
    ],
    "answer_from_files": [
        "In the uploaded slides, what is the launch date?",
        "Which supplier is named in the attached contract?",
        "Based on the files I attached, what were Q3 sales?",
        "What is the deadline mentioned in my documents?",
        "According to the attached notes, when was the Skerryvore light automated?",
    ],
    "extract_from_collection": [
        "For every contract in the legal collection, extract the notice period",
        "Tabulate the publication year of each paper in the papers collection",
        "List the auditor of every annual report in the filings collection as a spreadsheet",
    ],
    "answer_from_collection": [
        "Query the invoices collection for unpaid invoices",
        "What does the handbook collection say about vacation days?",
        "Find mentions of GDPR in the legal collection",
    ],
    "research": [
        "Research what docs.ray.io and anyscale.com say about serve autoscaling",
        "Look into how stripe.com documents refunds",
        "Find information about rate limits across https://api.example.com and https://docs.example.com",
        "Research the Skerryvore lighthouse on http://127.0.0.1:5000/site/",
        "Compare the pricing described on pinecone.io and qdrant.tech",
    ],
}


@pytest.mark.parametrize(("name", "goal"), [pytest.param(n, g, id=f"{n}:{g[:40]}")
                                            for n, goals in HELD_OUT.items() for g in goals])
def test_held_out_goals_pick_the_right_template(planner, name, goal):
    result = planner.plan(goal, tools=TOOLS, has_attachments=name in WITH_FILES)
    assert result.template == name, result.ranking
    assert result.score >= MATCH_THRESHOLD


UNRELATED = [
    "Book me a flight to Paris next Tuesday",
    "Write a poem about spring",
    "What's the weather like tomorrow?",
    "Write a Python function that sorts a list",
    "Send an email to my boss saying I'm late",
    "Compute the sum of squares up to 1000",
    "Deploy my app to Kubernetes",
    "What is the capital of France?",
    "Refactor this repository to use asyncio",
    "Summarize the history of the Roman empire",
    "Book a table at https://restaurant.example.com",
    "Buy the cheapest laptop on https://shop.example.com",
    "Log in to https://mail.example.com and delete my spam",
    "Fix the bug in this code: ```python\nprint(1/0)\n```",
    "Refactor this code: `x=1; print(x)`",
]


@pytest.mark.parametrize("goal", UNRELATED)
def test_unrelated_goals_get_no_plan_and_a_message_saying_what_to_do(planner, goal):
    with pytest.raises(NoTemplate) as info:
        planner.plan(goal, tools=TOOLS)
    message = str(info.value)
    assert CONFIGURE_MODEL in message and "TROUPE_MODEL_REASON=openai/gpt-4o-mini" in message
    assert "Fetch and summarize given web pages" in message  # what offline mode does handle
    assert info.value.reason in message


def test_no_template_says_which_slot_the_goal_lacks(planner):
    with pytest.raises(NoTemplate, match=r"summarize_urls \(0\.\d\d\) needs a URL"):
        planner.plan("Summarize the history of the Roman empire", tools=TOOLS)
    with pytest.raises(NoTemplate, match=r"run_python \(0\.\d\d\) needs the Python code to run"):
        planner.plan("Write a Python function that sorts a list", tools=TOOLS)


def test_a_question_about_attached_files_needs_attachments(planner):
    goal = "What is the notice period in the attached contract?"
    with pytest.raises(NoTemplate, match="the task has none attached"):
        planner.plan(goal, tools=TOOLS, has_attachments=False)
    result = planner.plan(goal, tools=TOOLS, has_attachments=True)
    assert result.template == "answer_from_files" and result.slots["question"] == goal
    assert result.plan.node("retrieve").args["collection"] == "attachments"


def test_with_attachments_a_goal_nothing_else_fits_is_asked_of_the_files(planner):
    goal = "Skerryvore light automation"
    with pytest.raises(NoTemplate, match="no template matches"):
        planner.plan(goal, tools=TOOLS)
    result = planner.plan(goal, tools=TOOLS, has_attachments=True)
    assert result.template == "answer_from_files" and result.score < MATCH_THRESHOLD
    for refused in ("Book me a flight to Paris next Tuesday", "Send an email to my boss saying I'm late"):
        with pytest.raises(NoTemplate, match="offline mode does not do"):
            planner.plan(refused, tools=TOOLS, has_attachments=True)


def test_a_template_whose_tools_are_missing_is_skipped_with_the_fix(planner):
    without_web = {k: v for k, v in TOOLS.items() if k != "crawl"}
    with pytest.raises(NoTemplate, match=r"lacks: crawl \(add their modules to tool_modules\)"):
        planner.plan("Summarize https://example.com/post", tools=without_web)


def test_slots_are_filled_from_the_goal(planner):
    r = planner.plan('Summarize https://a.example.com/x and b.example.org/docs about "rate limits"', tools=TOOLS)
    assert r.slots == {"urls": ["https://a.example.com/x", "https://b.example.org/docs"], "focus": "rate limits"}
    assert r.plan.node("fetch").args["url"] == r.slots["urls"]
    assert r.plan.node("summarize").args["focus"] == "rate limits"
    citations = next(t for t in r.acceptance_tests if t.check_type == "citations_supported")
    assert citations.params == {"artifact": "summary.md", "sources_node": "fetch", "sources_field": "pages"}

    r = planner.plan("Research pricing of vector databases on qdrant.tech and weaviate.io", tools=TOOLS)
    assert r.template == "research"
    assert r.slots == {"topic": "pricing of vector databases",
                       "sites": ["https://qdrant.tech/", "https://weaviate.io/"]}

    r = planner.plan("Run this and tell me the output:\n```python\nx = 6 * 7\nprint(x)\n```", tools=TOOLS)
    assert r.plan.node("run").args["code"] == "x = 6 * 7\nprint(x)"

    r = planner.plan("Using my files, when was the pension policy last reviewed?", tools=TOOLS, has_attachments=True)
    assert r.slots["question"] == "When was the pension policy last reviewed?"


@pytest.mark.parametrize(("goal", "code"), [
    ("Run `print(2 ** 10)`", "print(2 ** 10)"),
    ("Evaluate `sorted([3, 1, 2])` in Python", "_ = (sorted([3, 1, 2]))\nif _ is not None:\n    print(repr(_))"),
    ("Run: import math; print(math.pi)", "import math; print(math.pi)"),
    ("Execute:\n```py\nfor i in range(2):\n    print(i)\n```", "for i in range(2):\n    print(i)"),
    ("Run `x = 2` and then `print(x * 3)`", "x = 2\nprint(x * 3)"),
])
def test_code_is_taken_from_fences_backticks_or_after_a_colon(planner, goal, code):
    assert planner.plan(goal, tools=TOOLS).slots["code"] == code


def test_goal_facts():
    f = GoalFacts.parse('Compare "zero trust" on https://x.example.com/a, docs.ray.io and data/q3.csv; '
                        "mail bob@example.com. Use the Contracts collection")
    assert f.urls == ["https://x.example.com/a", "https://docs.ray.io/"]  # not the mail address
    assert f.paths == ["data/q3.csv"] and f.quoted == ["zero trust"] and f.collection == "contracts"
    assert f.code is None and f.focus == "zero trust"
    assert GoalFacts.parse("Print the words `hello` and `report`").code is None  # bare words are not code
    assert GoalFacts.parse("What does https://a.example/p say about pricing plans?").focus == "pricing plans"
    assert GoalFacts.parse("Summarize https://a.example/p").focus == ""
    same = GoalFacts.parse("Summarize https://a.example/p/").entities()
    assert same == GoalFacts.parse("Give me the gist of https://a.example/p").entities()
    assert same != GoalFacts.parse("Summarize https://a.example/q").entities()


def learned(planner, goal, plan, source, task_id="t-old"):
    return LearnedTemplate(goal=goal, embedding=planner.embed(goal), plan=plan, acceptance_tests=[],
                           task_id=task_id, source=source)


def test_a_learned_template_from_a_template_is_refilled_from_the_new_goal(planner):
    old_goal = "Boil https://old.example/essay down to its core argument"
    old = planner.plan("Summarize https://old.example/essay", tools=TOOLS)
    memory = [learned(planner, old_goal, old.plan, old.source)]
    goal = "Boil https://new.example/paper down to its core argument"
    assert planner.rank(goal)[0][1] < planner.rank(goal, memory)[0][1]  # the learned goal is closer
    result = planner.plan(goal, tools=TOOLS, learned=memory)
    assert result.template == "summarize_urls" and result.learned_from == "t-old"
    assert result.slots["urls"] == ["https://new.example/paper"]  # the new page, not the learned one
    assert result.score > 0.9


def test_a_learned_plan_from_elsewhere_is_reused_only_for_the_same_things(planner):
    plan = Plan.model_validate({"nodes": [
        {"id": "get", "tool": "http_fetch", "args": {"url": "https://status.example.com/api"}},
        {"id": "out", "tool": "write_report", "args": {"title": "Status", "body": "{{get.output.text}}"},
         "deps": ["get"]}]})
    goal = "Write the status of https://status.example.com/api into a report"
    memory = [learned(planner, goal, plan, "llm", task_id="t-llm")]
    reused = planner.plan("Write the status of https://status.example.com/api into a report.", tools=TOOLS,
                          learned=memory)
    assert reused.template == "learned" and reused.plan == plan and reused.source == "learned:t-llm"
    other = planner.plan("Write the status of https://status.example.org/api into a report", tools=TOOLS,
                         learned=memory)
    assert other.template != "learned"  # another URL: its plan would fetch the wrong page


def test_embed_is_a_unit_vector(planner):
    v = np.asarray(planner.embed("Summarize https://example.com"))
    assert v.shape == (384,) and abs(np.linalg.norm(v) - 1) < 1e-5


def test_list_templates():
    listed = {t["name"]: t for t in list_templates()}
    assert sorted(listed) == sorted([*NAMES, "build_web_api"])  # build_web_api needs a model: not in NAMES
    assert listed["build_web_api"]["requires"] == ["model"]
    summarize = listed["summarize_urls"]
    assert summarize["title"] and summarize["description"] and len(summarize["examples"]) >= 5
    assert summarize["slots"]["urls"] == {"description": summarize["slots"]["urls"]["description"],
                                          "type": "list", "required": True}
    assert listed["answer_from_files"]["requires"] == ["attachments"]
    assert "summarize" in summarize["tools"]


def test_every_template_is_a_valid_plan_with_valid_tests():
    from troupe.models import AcceptanceTest
    from troupe.plans import validate_plan

    for t in list_templates():
        slots = {"urls": ["https://example.com/a"], "sites": ["https://example.com/"], "topic": "t",
                 "question": "q?", "collection": "c", "code": "print(1)", "spec": "a notes API"}
        doc, plan = load_template(t["name"], {k: v for k, v in slots.items() if k in t["slots"]})
        validate_plan(plan, TOOLS)
        for test in doc["acceptance_tests"]:
            AcceptanceTest.model_validate(test)


async def test_a_conductor_sends_a_plan_it_saw_learned_once_per_tenant():
    """PlannerClient skips the request for a plan the Planner already answered for the tenant."""
    from deployments.planner import PlannerClient
    from troupe.models import Task

    class Handle:
        def __init__(self):
            self.sent: list[str] = []
            self.learn = self

        async def _learn(self, task: Task) -> str:
            self.sent.append(task.tenant)
            return f"{task.id}:1"

        def remote(self, task: Task):
            return self._learn(task)

    handle = Handle()
    client = PlannerClient(handle)
    plan = Plan.model_validate({"nodes": [{"id": "a", "tool": "files", "args": {"action": "list"}}]})
    other = Plan.model_validate({"nodes": [{"id": "b", "tool": "files", "args": {"action": "list"}}]})
    first = Task(id="t1", tenant="acme", goal="g", plan=plan)
    assert await client.learn(first) == "t1:1"
    assert await client.learn(Task(id="t2", tenant="acme", goal="g again", plan=plan)) == "t1:1"  # not sent
    assert await client.learn(Task(id="t3", tenant="globex", goal="g", plan=plan)) == "t3:1"  # another tenant's
    assert await client.learn(Task(id="t4", tenant="acme", goal="g", plan=other)) == "t4:1"  # another plan
    assert handle.sent == ["acme", "globex", "acme"]
