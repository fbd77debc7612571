"""Plan validation and upstream-output references.

Reference syntax, in any string inside a node's `args`:

- ``{{square.output}}`` — the whole output of node ``square``;
- ``{{fetch.output.text}}`` / ``{{search.output.results.0.url}}`` — a field or list index.

A string that is exactly one reference takes the referenced value as it is (a dict stays a
dict); a reference inside longer text is rendered as text (JSON for non-strings).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from graphlib import CycleError, TopologicalSorter
from typing import Any, Protocol

from pydantic import ValidationError

from troupe.models import Plan

__all__ = ["PlanError", "ReferenceError_", "get_path", "resolve_args", "upstream", "validate_plan"]

REF = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_-]*)\.output((?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


class PlanError(ValueError):
    """A plan that cannot run; `problems` holds one message per fault, each naming the node."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid plan: " + "; ".join(problems))


class ReferenceError_(ValueError):
    """A reference that cannot be resolved at run time (a missing field in an output)."""


class _ToolLike(Protocol):
    def validate(self, args: dict[str, Any]) -> Any: ...


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def referenced_nodes(args: dict[str, Any]) -> set[str]:
    return {m.group(1) for s in _strings(args) for m in REF.finditer(s)}


def upstream(plan: Plan) -> dict[str, set[str]]:
    """Every node's transitive dependencies (assumes the plan is acyclic)."""
    deps = {n.id: set(n.deps) for n in plan.nodes}
    memo: dict[str, set[str]] = {}

    def visit(node_id: str) -> set[str]:
        if node_id not in memo:
            memo[node_id] = set()
            for d in deps.get(node_id, ()):
                memo[node_id] |= {d} | visit(d)
        return memo[node_id]

    return {node_id: visit(node_id) for node_id in deps}


def _is_whole_reference(value: Any) -> bool:
    return isinstance(value, str) and REF.fullmatch(value.strip()) is not None


def validate_plan(plan: Plan, tools: Mapping[str, _ToolLike]) -> None:
    """Raise PlanError listing every fault: duplicates, unknown deps, cycles, tools, args."""
    problems: list[str] = []
    ids = [n.id for n in plan.nodes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        problems.append(f"node ids must be unique; repeated: {', '.join(dupes)}")
    known = set(ids)
    for n in plan.nodes:
        for d in n.deps:
            if d not in known:
                problems.append(f"node {n.id!r} depends on unknown node {d!r}; known nodes: {', '.join(ids)}")
            if d == n.id:
                problems.append(f"node {n.id!r} depends on itself; remove it from its deps")
    if problems:
        raise PlanError(problems)
    try:
        TopologicalSorter({n.id: n.deps for n in plan.nodes}).prepare()
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise PlanError([f"the plan has a cycle: {cycle}; remove one of these deps"]) from None

    ups = upstream(plan)
    for n in plan.nodes:
        for ref in sorted(referenced_nodes(n.args)):
            if ref not in known:
                problems.append(f"node {n.id!r} references unknown node {ref!r} in its args")
            elif ref not in ups[n.id]:
                problems.append(
                    f"node {n.id!r} references {{{{{ref}.output}}}} but does not depend on {ref!r}; "
                    f"add {ref!r} to its deps"
                )
        if n.kind == "tool":
            if not n.tool:
                problems.append(f"node {n.id!r} has kind 'tool' but names no tool; set its 'tool'")
                continue
            if n.tool not in tools:
                problems.append(
                    f"node {n.id!r} uses unknown tool {n.tool!r}; available: {', '.join(sorted(tools))}"
                )
                continue
            problems += _arg_problems(n.id, tools[n.tool], n.args)
        elif n.kind == "agent":
            if not n.instructions:
                problems.append(f"node {n.id!r} has kind 'agent' but no 'instructions'; say what it must achieve")
            for ref in sorted(referenced_nodes({"instructions": n.instructions or ""}) - ups[n.id]):
                problems.append(f"node {n.id!r} references {{{{{ref}.output}}}} in its instructions but does not "
                                f"depend on {ref!r}; add {ref!r} to its deps")
            unknown = [t for t in n.tools if t not in tools]
            if unknown:
                problems.append(f"node {n.id!r} allows unknown tools {', '.join(unknown)}; "
                                f"available: {', '.join(sorted(tools))}")
            if not n.tools:
                problems.append(f"node {n.id!r} has kind 'agent' but allows no tools; list them in 'tools'")
    if problems:
        raise PlanError(problems)


def _arg_problems(node_id: str, tool: _ToolLike, args: dict[str, Any]) -> list[str]:
    """Type-check the arguments; a value that is a whole reference (a field's, or an item's
    in a list or dict, e.g. `shards: ["{{a.output}}", "{{b.output}}"]`) is checked at run time."""
    try:
        tool.validate(args)
        return []
    except ValidationError as exc:  # pragma: no cover - tools raise ToolArgumentError
        errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    except ValueError as exc:
        errors = list(getattr(exc, "problems", [str(exc)]))
    return [f"node {node_id!r}: bad argument {e}" for e in errors
            if not _under_reference(args, e.split(":", 1)[0].split("."))]


def _under_reference(args: Any, loc: list[str]) -> bool:
    """Whether the value at `loc` (an error's location), or one holding it, is a whole reference."""
    value = args
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False
        if _is_whole_reference(value):
            return True
    return False


def get_path(value: Any, path: str) -> Any:
    """Follow a dotted path of dict keys and list indexes; KeyError names the missing part."""
    for part in filter(None, path.split(".")):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _lookup(outputs: Mapping[str, Any], node_id: str, path: str) -> Any:
    try:
        return get_path(outputs[node_id], path)
    except KeyError as exc:
        raise ReferenceError_(f"{{{{{node_id}.output{path}}}}}: the output has no {exc.args[0]!r}") from None


def _render(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def resolve_args(args: Any, outputs: Mapping[str, Any]) -> Any:
    """Replace references with upstream outputs (see module docstring)."""
    if isinstance(args, dict):
        return {k: resolve_args(v, outputs) for k, v in args.items()}
    if isinstance(args, list):
        return [resolve_args(v, outputs) for v in args]
    if not isinstance(args, str):
        return args
    whole = REF.fullmatch(args.strip())
    if whole:
        return _lookup(outputs, whole.group(1), whole.group(2))
    return REF.sub(lambda m: _render(_lookup(outputs, m.group(1), m.group(2))), args)
