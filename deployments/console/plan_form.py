"""The New task form's plan box: JSON or YAML parsed into a plan, and the errors put on the
node at fault, with the line where that node starts in the text the user wrote."""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["node_of", "outline", "parse_plan"]

# validate_plan's messages start with the node they are about: "node 'x' uses unknown tool ..."
_NODE_MESSAGE = re.compile(r"""^node (?:'([^']*)'|"([^"]*)")""")


def parse_plan(text: str) -> Any:
    """The plan box holds JSON or YAML (JSON is YAML); a bare list of nodes is accepted too."""
    data = yaml.safe_load(text)
    if isinstance(data, list):
        data = {"nodes": data}
    return data


def node_of(plan: Any, loc: tuple[Any, ...] = (), message: str = "") -> str | None:
    """The id of the plan node an error is about: from a validation error's location
    (plan.nodes.<i>...), else from a plan check's message ("node 'x' ...")."""
    if len(loc) >= 3 and loc[0] == "plan" and loc[1] == "nodes" and isinstance(loc[2], int):
        try:
            return str(plan["nodes"][loc[2]].get("id") or f"#{loc[2] + 1}")
        except (KeyError, IndexError, TypeError, AttributeError):
            return f"#{loc[2] + 1}"
    found = _NODE_MESSAGE.match(message)
    return next((g for g in found.groups() if g is not None), None) if found else None


def _node_lines(text: str) -> list[int]:
    """The line (1-based) where each node of the plan text starts, in order."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if isinstance(root, yaml.MappingNode):
        root = next((v for k, v in root.value if getattr(k, "value", None) == "nodes"), None)
    if not isinstance(root, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in root.value]


def outline(text: str, plan: Any, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each node of a submitted plan with its line and the errors about it, for the form to
    show under the plan box; empty when the plan has no list of nodes."""
    nodes = plan.get("nodes") if isinstance(plan, dict) else None
    if not isinstance(nodes, list) or not nodes:
        return []
    lines = _node_lines(text)
    items = []
    for i, n in enumerate(nodes):
        node_id = str(n.get("id") or f"#{i + 1}") if isinstance(n, dict) else f"#{i + 1}"
        items.append({"id": node_id, "line": lines[i] if i < len(lines) else None,
                      "what": (n.get("tool") or n.get("kind") or "") if isinstance(n, dict) else "",
                      "errors": [e["message"] for e in errors if e.get("node") == node_id]})
    return items
