"""`openapi_check`: validate the API contract (an OpenAPI 3 document) written before the code.

The checks are structural and say exactly what to fix: the version, `info`, at least one
path, every operation with responses and a unique operationId, every `$ref` resolvable.
Its output lists the operations, for the nodes that implement and test the contract.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from tools.registry import ToolContext, ToolError, tool
from tools.workspace import resolve_inside

__all__ = ["check_contract", "openapi_check"]

METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _resolves(doc: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False  # the contract must stand alone: no external files
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_contract(text: str, name: str) -> dict[str, Any]:
    """The contract's operations; ToolError lists every problem found."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolError(f"{name} is not valid YAML/JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ToolError(f"{name} must hold one OpenAPI object, not {type(doc).__name__}")
    problems = []
    if not str(doc.get("openapi", "")).startswith("3."):
        problems.append("`openapi` must be a 3.x version, e.g. openapi: 3.1.0")
    info = doc.get("info")
    if not isinstance(info, dict) or not info.get("title") or not info.get("version"):
        problems.append("`info` needs a `title` and a `version`")
    paths = doc.get("paths")
    operations, seen = [], set()
    if not isinstance(paths, dict) or not paths:
        problems.append("`paths` must name at least one path")
        paths = {}
    for path, item in paths.items():
        if not str(path).startswith("/"):
            problems.append(f"path {path!r} must start with '/'")
        if not isinstance(item, dict):
            problems.append(f"path {path!r} must map methods to operations")
            continue
        for method in (m for m in item if m in METHODS):
            op = item[method] or {}
            where = f"{method.upper()} {path}"
            if not isinstance(op, dict) or not op.get("responses"):
                problems.append(f"{where} needs `responses` (e.g. '200': {{description: OK}})")
                continue
            op_id = op.get("operationId")
            if not op_id:
                problems.append(f"{where} needs an `operationId`")
            elif op_id in seen:
                problems.append(f"{where}: operationId {op_id!r} is used twice")
            seen.add(op_id)
            operations.append({"method": method.upper(), "path": path, "operation_id": op_id,
                               "summary": op.get("summary", ""), "responses": sorted(map(str, op["responses"]))})
    if paths and not operations and not problems:
        problems.append("no path has an operation (get, post, ...)")
    bad = sorted({r for r in _refs(doc) if not _resolves(doc, r)})
    if bad:
        problems.append(f"unresolvable $ref: {', '.join(bad)} (define them under components)")
    if problems:
        raise ToolError(f"{name} is not a usable OpenAPI contract: " + "; ".join(problems))
    lines = [f"{o['method']} {o['path']} ({o['operation_id']}): {o['summary']} -> {', '.join(o['responses'])}"
             for o in operations]
    return {"title": info["title"], "version": str(info["version"]), "operations": operations,
            "summary": "\n".join(lines), "document": json.loads(json.dumps(doc, default=str))}


@tool
async def openapi_check(ctx: ToolContext, path: str = "project/openapi.yaml") -> dict[str, Any]:
    """Check an OpenAPI 3 contract in the workspace and list its operations.

    Args:
        path: The contract's file (YAML or JSON) in the workspace.
    """
    target: Path = resolve_inside(ctx.workspace.resolve(), path)
    if not target.is_file():
        raise ToolError(f"no contract {path!r} in the task workspace; write the OpenAPI document there first")
    text = await asyncio.to_thread(target.read_text, errors="replace")
    return check_contract(text, path)
