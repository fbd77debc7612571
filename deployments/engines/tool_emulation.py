"""Tool calls for models that have none: the request's `tools` become a JSON envelope the
model must answer in (`{"tool": name, "arguments": {...}}` or `{"final_answer": "..."}`, an
`anyOf` schema sent as `response_format`), and the envelope in the reply becomes ordinary
OpenAI `tool_calls` again. The agent loop above never knows the difference.

Plain functions over OpenAI-shaped dicts: no Ray, no LiteLLM.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

__all__ = ["EmulatedReply", "emulate_request", "envelope_schema", "parse_envelope"]

FINAL = "final_answer"

_INSTRUCTIONS = """\
You can use tools. Answer with exactly one JSON object and nothing else:
- to call a tool: {{"tool": "<tool name>", "arguments": {{...the tool's arguments...}}}}
- when you have the final answer: {{"final_answer": "<your answer>"}}
One tool call per answer; you will see its result, then answer again.

Tools:
{tools}"""


def envelope_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of an answer: one branch per tool (its own parameter schema under
    `arguments`), and the final answer. Tools come first: a weak model follows the order."""
    branches = []
    for spec in tools:
        fn = spec.get("function", spec)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        branches.append({"type": "object", "additionalProperties": False, "required": ["tool", "arguments"],
                         "properties": {"tool": {"const": fn["name"]}, "arguments": params}})
    branches.append({"type": "object", "additionalProperties": False, "required": [FINAL],
                     "properties": {FINAL: {"type": "string"}}})
    return {"anyOf": branches}


def _tool_lines(tools: list[dict[str, Any]]) -> str:
    lines = []
    for spec in tools:
        fn = spec.get("function", spec)
        params = json.dumps(fn.get("parameters") or {}, separators=(",", ":"))
        lines.append(f"- {fn['name']}: {fn.get('description') or ''}\n  arguments schema: {params}")
    return "\n".join(lines)


def _history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation in plain roles: an assistant's tool calls become its envelope, a tool
    result a user message naming the call (chat templates without tools drop both otherwise)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            envelopes = []
            for c in m["tool_calls"]:
                fn = c.get("function") or {}
                names[c.get("id", "")] = fn.get("name", "")
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except json.JSONDecodeError:
                    args = fn.get("arguments")
                envelopes.append(json.dumps({"tool": fn.get("name"), "arguments": args}, ensure_ascii=False))
            out.append({"role": "assistant", "content": "\n".join(envelopes)})
        elif role == "tool":
            name = names.get(m.get("tool_call_id", ""), "the tool")
            out.append({"role": "user", "content": f"Result of {name}:\n{m.get('content') or ''}"})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content", "name")})
    return out


def emulate_request(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                                           dict[str, Any]]:
    """The messages and `response_format` that stand in for `tools`. The instructions join
    the system prompt (kept first and whole); without one they become it."""
    history = _history(messages)
    instructions = _INSTRUCTIONS.format(tools=_tool_lines(tools))
    if history and history[0].get("role") == "system":
        history[0] = {"role": "system", "content": f"{history[0].get('content') or ''}\n\n{instructions}"}
    else:
        history.insert(0, {"role": "system", "content": instructions})
    fmt = {"type": "json_schema", "json_schema": {"name": "ToolEnvelope", "schema": envelope_schema(tools)}}
    return history, fmt


class EmulatedReply:
    """What an envelope means: a final answer (`content`) or one tool call."""

    def __init__(self, content: str | None, tool_calls: list[dict[str, Any]]):
        self.content = content
        self.tool_calls = tool_calls

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.tool_calls else None


def parse_envelope(content: str | None) -> EmulatedReply:
    """The reply as OpenAI would give it. Text that is not an envelope (a model that ignored
    the schema) is kept as the answer; a call of an unknown tool still becomes a call, so the
    agent loop answers it with its usual 'not allowed' result and the model can recover."""
    try:
        value = json.loads((content or "").strip())
    except json.JSONDecodeError:
        return EmulatedReply(content, [])
    if not isinstance(value, dict):
        return EmulatedReply(content, [])
    if isinstance(value.get("tool"), str) and value["tool"]:
        args = value.get("arguments")
        call = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": value["tool"],
                             "arguments": json.dumps(args if isinstance(args, dict) else {}, ensure_ascii=False)}}
        return EmulatedReply(None, [call])
    if FINAL in value:
        answer = value[FINAL]
        return EmulatedReply(answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False), [])
    return EmulatedReply(content, [])
