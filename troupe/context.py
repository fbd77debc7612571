"""Fitting an agent node's conversation into its model's context window.

Every turn is assembled as: the system prompt (with the pinned requirements) and the node's
instructions, then the node's digest of compacted turns, then the turns since. When that
would not fit the prompt budget (the window less room for the reply), the oldest turns are
compacted into the digest, at turn boundaries (an assistant message with the results of its
calls), until what is left takes at most COMPACT_TO of the budget, so compaction happens
every few dozen turns, not every turn. The digest is extractive: each compacted step's calls
and what they returned, cut short, with the step number that finds it in the task's events;
it needs no model, and a resumed drive reuses it from the log (`context.compacted`).

Tokens are estimated from characters (CHARS_PER_TOKEN, on the safe side for English text
and JSON) rather than counted with the model's own tokenizer, which the runner does not have.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Compaction", "DEFAULT_WINDOW", "assemble", "compact", "estimate_tokens", "prompt_budget"]

CHARS_PER_TOKEN = 3.0
DEFAULT_WINDOW = 32_768
"""Assumed when neither LiteLLM nor the engine says how large the group's window is."""
COMPACT_TO = 0.6
DIGEST_SHARE = 0.3
"""At most this share of the budget goes to the digest; its oldest lines go first."""
LINE_CHARS = 240


def estimate_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
    text = json.dumps(messages, ensure_ascii=False) + (json.dumps(tools, ensure_ascii=False) if tools else "")
    return math.ceil(len(text) / CHARS_PER_TOKEN) + 4 * len(messages)


def prompt_budget(window: int, max_tokens: int | None = None) -> int:
    """What a prompt may take: the window less the reply's room (max_tokens, else a quarter)."""
    return window - (max_tokens or window // 4)


def assemble(head: list[dict[str, Any]], digest: str | None, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not digest:
        return [*head, *recent]
    note = {"role": "user", "content": "Your earlier steps, compacted (the full record is in the task's events):\n"
                                       + digest + "\nGo on from here; do not repeat these calls."}
    return [*head, note, *recent]


@dataclass(frozen=True)
class Compaction:
    upto: int
    """Transcript messages before this index are in the digest."""
    digest: str
    steps: tuple[int, int]
    """The first and last step (model turn) it folded in."""


def compact(head: list[dict[str, Any]], tools: list[dict[str, Any]] | None, transcript: list[dict[str, Any]],
            compacted: int, digest: str | None, budget: int) -> Compaction | None:
    """A compaction that makes the next request fit, or None when it fits already (or when
    nothing can be compacted: only the turn in progress is left)."""
    if estimate_tokens(assemble(head, digest, transcript[compacted:]), tools) <= budget:
        return None
    # Turn boundaries: where an assistant message starts, never between a call and its result.
    starts = [i for i in range(compacted + 1, len(transcript)) if transcript[i].get("role") == "assistant"]
    if not starts:
        return None
    step_of = {i: n + 1 for n, i in enumerate(i for i, m in enumerate(transcript) if m.get("role") == "assistant")}
    for upto in starts:
        lines = (digest.splitlines() if digest else []) + _lines(transcript, compacted, upto, step_of)
        new = _bounded(lines, int(budget * DIGEST_SHARE))
        if estimate_tokens(assemble(head, new, transcript[upto:]), tools) <= budget * COMPACT_TO or upto == starts[-1]:
            return Compaction(upto=upto, digest=new, steps=(step_of.get(compacted, 1), step_of[upto] - 1))
    return None


def _lines(transcript: list[dict[str, Any]], start: int, end: int, step_of: dict[int, int]) -> list[str]:
    results = {m.get("tool_call_id"): str(m.get("content", ""))
               for m in transcript[start:end] if m.get("role") == "tool"}
    lines = []
    for i in range(start, end):
        m = transcript[i]
        if m.get("role") != "assistant":
            continue
        step = step_of[i]
        if m.get("content"):
            lines.append(_cut(f"- step {step}: said {m['content']}"))
        for call in m.get("tool_calls") or []:
            fn = call.get("function", {})
            result = results.get(call.get("id"), "(no result recorded)")
            lines.append(_cut(f"- step {step}: {fn.get('name')}({fn.get('arguments', '')}) -> {result}"))
    return lines


def _cut(line: str) -> str:
    line = " ".join(line.split())
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 3] + "..."


def _bounded(lines: list[str], tokens: int) -> str:
    """The newest lines that fit in `tokens`, with a count of the oldest ones left out."""
    earlier = sum(int(x[3:].split()[0]) for x in lines if x.startswith("- (") and x[3:].split()[0].isdigit())
    lines = [x for x in lines if not x.startswith("- (")]
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = math.ceil((len(line) + 1) / CHARS_PER_TOKEN)
        if used + cost > tokens - 20:
            break
        kept.append(line)
        used += cost
    dropped = earlier + len(lines) - len(kept)
    head = [f"- ({dropped} earlier lines left out; see the task's events)"] if dropped else []
    return "\n".join(head + kept[::-1])
