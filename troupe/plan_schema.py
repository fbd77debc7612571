"""A plan's JSON Schema tight enough for a small local model to fill in.

The planner's default schema (from the Pydantic models) lets a node's `tool` be any string
and its `args` any object, and lets strings run on: a 135M-parameter model, held to that
schema by llama.cpp's grammar, wrote plans naming no tool and strings that ran to the token
limit. This schema makes each node one of the tools with that tool's own argument schema
(`tool` a constant, `args` its parameters), bounds every free string, list and the number of
nodes, and numbers the nodes, each depending only on earlier ones, so whatever the grammar
lets through is a plan that validates (arguments' own rules, such as "content is required
for write", aside: the repair loop's business).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["constrained_plan_schema"]

_DROP = ("title", "description", "default", "examples")


def _inline(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """`$ref`s into `$defs` replaced by what they name (tools' schemas are not recursive)."""
    if isinstance(schema, list):
        return [_inline(s, defs, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema and depth < 8:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _inline(copy.deepcopy(defs.get(name, {})), defs, depth + 1)
    return {k: _inline(v, defs, depth) for k, v in schema.items() if k != "$defs"}


def _free_form(schema: dict[str, Any]) -> bool:
    """An object of any keys, an array or a number: what a small model fills with noise."""
    options = schema.get("anyOf", [schema])
    return any(o.get("type") in ("object", "array", "number", "integer") for o in options if isinstance(o, dict))


def _bounded(schema: Any, max_chars: int, max_items: int) -> Any:
    """Every free string at most `max_chars`, every list at most `max_items`; prose dropped;
    optional arguments that are objects, lists or numbers left out (their defaults apply)."""
    if isinstance(schema, list):
        return [_bounded(s, max_chars, max_items) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v, max_chars, max_items) for k, v in schema.items() if k not in _DROP and k != "properties"}
    if "properties" in schema:  # keys here are argument names, not schema keywords
        required = set(schema.get("required", []))
        out["properties"] = {name: _bounded(prop, max_chars, max_items) for name, prop in schema["properties"].items()
                             if name in required or not _free_form(prop)}
    if out.get("type") == "string" and "enum" not in out and "const" not in out and "pattern" not in out:
        out["maxLength"] = min(int(out.get("maxLength", max_chars)), max_chars)
    if out.get("type") == "array":
        out["maxItems"] = min(int(out.get("maxItems", max_items)), max_items)
    return out


def _node(spec: dict[str, Any], node_id: str, earlier: list[str], max_chars: int, max_items: int) -> dict[str, Any]:
    params = spec.get("parameters", spec.get("args_schema", {})) or {"type": "object"}
    args = _bounded(_inline(params, params.get("$defs", {})), max_chars, max_items)
    deps: dict[str, Any] = {"type": "array", "maxItems": len(earlier)}
    if earlier:
        deps["items"] = {"enum": earlier}
    return {"type": "object", "additionalProperties": False,
            "required": ["id", "tool", "args", "deps"],
            "properties": {"id": {"const": node_id}, "tool": {"const": spec["name"]}, "args": args, "deps": deps}}


def constrained_plan_schema(specs: list[dict[str, Any]], *, max_nodes: int = 4, max_chars: int = 200,
                            max_items: int = 8) -> dict[str, Any]:
    """`{"nodes": [...]}` where node i is `n<i>`, a call of one of `specs`' tools, and may
    depend only on the nodes before it: unique ids, known deps and no cycle by construction."""
    ids = [f"n{i}" for i in range(1, max_nodes + 1)]
    positions = [{"anyOf": [_node(s, node_id, ids[:i], max_chars, max_items) for s in specs]}
                 for i, node_id in enumerate(ids)]
    return {"type": "object", "additionalProperties": False, "required": ["nodes"],
            "properties": {"nodes": {"type": "array", "minItems": 1, "maxItems": max_nodes,
                                     "prefixItems": positions}}}  # maxItems: nothing after them


def relevant_specs(goal: str, specs: list[dict[str, Any]], embedder: Any, k: int = 5) -> list[dict[str, Any]]:
    """The `k` tools whose name and description are nearest the goal's meaning, in their
    original order. A small model plans better from a short list, its prompt shrinks from
    every tool's schema to a few, and llama.cpp's grammar-constrained sampling slows with
    every alternative it must follow (27 tools × 4 positions: about 1 token/s here)."""
    if len(specs) <= k:
        return specs
    texts = [f"{s['name']}: {s.get('description', '')}" for s in specs]
    vectors = embedder.embed([goal, *texts])
    scores = vectors[1:] @ vectors[0]
    keep = set(sorted(range(len(specs)), key=lambda i: -float(scores[i]))[:k])
    return [s for i, s in enumerate(specs) if i in keep]
