"""Plan validation and references: every fault is named with its node and its fix."""

import pytest

from tools.registry import ToolContext, ToolRegistry, tool
from troupe.models import Plan
from troupe.plans import PlanError, ReferenceError_, resolve_args, validate_plan

registry = ToolRegistry()


@tool(registry=registry)
async def add(ctx: ToolContext, a: int, b: int = 0) -> int:
    """Add two numbers.

    Args:
        a: first.
        b: second.
    """
    return a + b


@tool(registry=registry)
async def echo(ctx: ToolContext, text: str) -> str:
    """Echo text.

    Args:
        text: what to echo.
    """
    return text


TOOLS = {n: registry.get(n) for n in registry.names()}


def plan(*nodes):
    return Plan.model_validate({"nodes": list(nodes)})


def problems(p):
    with pytest.raises(PlanError) as exc:
        validate_plan(p, TOOLS)
    return exc.value.problems


def test_valid_plan_with_references():
    validate_plan(plan({"id": "x", "tool": "add", "args": {"a": 1}},
                       {"id": "y", "tool": "echo", "args": {"text": "sum {{x.output}}"}, "deps": ["x"]},
                       {"id": "z", "tool": "add", "args": {"a": "{{x.output}}"}, "deps": ["y"]}), TOOLS)


def test_cycle_is_named():
    [msg] = problems(plan({"id": "a", "tool": "add", "args": {"a": 1}, "deps": ["c"]},
                          {"id": "b", "tool": "add", "args": {"a": 1}, "deps": ["a"]},
                          {"id": "c", "tool": "add", "args": {"a": 1}, "deps": ["b"]}))
    assert "cycle" in msg and "a" in msg and "b" in msg and "c" in msg


def test_unknown_dep_and_self_dep():
    msgs = problems(plan({"id": "a", "tool": "add", "args": {"a": 1}, "deps": ["ghost", "a"]}))
    assert any("unknown node 'ghost'" in m for m in msgs)
    assert any("depends on itself" in m for m in msgs)


def test_unknown_tool_lists_available():
    [msg] = problems(plan({"id": "a", "tool": "nope"}))
    assert "unknown tool 'nope'" in msg and "add, echo" in msg


def test_bad_args_name_node_and_field():
    msgs = problems(plan({"id": "a", "tool": "add", "args": {"a": "ten", "c": 1}}))
    assert any("node 'a'" in m and "a:" in m for m in msgs)
    assert any("c:" in m and "Extra inputs" in m for m in msgs)
    assert any("a:" in m for m in problems(plan({"id": "a", "tool": "add", "args": {}})))


def test_reference_needs_dependency():
    msgs = problems(plan({"id": "x", "tool": "add", "args": {"a": 1}},
                         {"id": "y", "tool": "echo", "args": {"text": "{{x.output}}"}}))
    assert any("does not depend on 'x'" in m and "add 'x' to its deps" in m for m in msgs)


def test_duplicate_ids():
    assert any("unique" in m for m in problems(plan({"id": "a", "tool": "add", "args": {"a": 1}},
                                                    {"id": "a", "tool": "add", "args": {"a": 2}})))


def test_bad_node_id_rejected_by_model():
    with pytest.raises(ValueError):
        plan({"id": "../evil", "tool": "add"})


def test_resolve_whole_and_embedded_references():
    outputs = {"f": {"text": "hello", "links": ["u1", "u2"]}, "n": 7}
    assert resolve_args({"x": "{{f.output.text}}"}, outputs) == {"x": "hello"}
    assert resolve_args({"x": "{{ f.output.links }}"}, outputs) == {"x": ["u1", "u2"]}
    assert resolve_args({"x": ["n={{n.output}}", {"y": "{{f.output.links.1}}"}]}, outputs) == {"x": ["n=7", {"y": "u2"}]}
    assert resolve_args({"x": "all: {{f.output}}"}, outputs)["x"].startswith('all: {"text": "hello"')
    with pytest.raises(ReferenceError_, match="no 'missing'"):
        resolve_args({"x": "{{f.output.missing}}"}, outputs)
