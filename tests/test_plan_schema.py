"""The constrained plan schema for small local models: what it admits validates as a plan,
and what would not validate (unknown tools, missing arguments, duplicate ids, deps on later
or unknown nodes, runaway strings) it does not admit."""

from __future__ import annotations

import jsonschema
import pytest

import tools.builtin  # noqa: F401  (registers the tools)
import tools.documents  # noqa: F401
from tools.registry import default_registry
from troupe.models import Plan
from troupe.plan_schema import constrained_plan_schema
from troupe.plans import validate_plan

TOOLS = {n: default_registry.get(n) for n in default_registry.names()}
SCHEMA = constrained_plan_schema([t.spec() for t in TOOLS.values()], max_nodes=3, max_chars=50)
GOOD = {"nodes": [
    {"id": "n1", "tool": "python", "args": {"code": "print(17 * 23)"}, "deps": []},
    {"id": "n2", "tool": "write_report", "args": {"title": "Result", "body": "{{n1.output.stdout}}"},
     "deps": ["n1"]},
]}


def admitted(plan: dict) -> bool:
    try:
        jsonschema.validate(plan, SCHEMA)
        return True
    except jsonschema.ValidationError:
        return False


def test_the_schema_is_valid_json_schema_and_admits_a_plan_that_validates():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert admitted(GOOD)
    validate_plan(Plan.model_validate(GOOD), TOOLS)


def with_node(n: int, **changes) -> dict:
    nodes = [dict(node) for node in GOOD["nodes"]]
    nodes[n] = {**nodes[n], **changes}
    return {"nodes": nodes}


@pytest.mark.parametrize("plan", [
    pytest.param(with_node(0, tool="send_email"), id="unknown tool"),
    pytest.param(with_node(1, args={"body": "no title"}), id="required argument missing"),
    pytest.param(with_node(1, id="n1"), id="duplicate id"),
    pytest.param(with_node(0, deps=["n2"]), id="depends on a later node"),
    pytest.param(with_node(1, deps=["n9"]), id="depends on an unknown node"),
    pytest.param(with_node(0, args={"code": "x" * 51}), id="string over the bound"),
    pytest.param(with_node(0, args={"code": "print(1)", "timeout_s": 10}), id="optional number left out"),
    pytest.param({"nodes": GOOD["nodes"] * 2}, id="too many nodes"),
    pytest.param({"nodes": []}, id="no node"),
])
def test_what_would_not_validate_is_not_admitted(plan):
    assert not admitted(plan)


def test_a_small_model_is_offered_the_tools_nearest_the_goal():
    from troupe.embeddings import default_embedder
    from troupe.plan_schema import relevant_specs

    specs = [t.spec() for t in TOOLS.values()]
    chosen = [s["name"] for s in relevant_specs("Run this Python code and print the result", specs,
                                                  default_embedder(), k=3)]
    assert len(chosen) == 3 and "python" in chosen
    assert [s["name"] for s in relevant_specs("anything", specs[:2], default_embedder(), k=3)] == \
        [s["name"] for s in specs[:2]]
