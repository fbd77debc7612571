"""The hot working set of a task and of each of its agent nodes, kept in hot memory
(memory/hot.py) and rebuilt from the event log whenever it is missing or behind.

Per task (pinned: never evicted while the task's agents run):
    pins             the pinned requirements
    plan             the plan summary, one line per node
Per agent node:
    n:<id>:digest    the digest of its compacted turns (pinned)
    n:<id>:win       the turns since: assistant messages whole, the last N tool outputs as
                     pointers to their own entries, older outputs as references into the log
    n:<id>:out:<c>   the full output of call <c>, for the last N calls only

Every entry carries the version of the log it reflects (how many pins, the plan's hash, the
transcript's length and compaction point); the runner holds the log's fold (the Task), so an
entry that is missing, evicted or behind is rebuilt from it at no extra query and written
back. What reaches the model is the same whether it came from Redis or from the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from memory.hot import HotEntry, HotStore
from troupe.models import NodeStatus, Plan, Task

__all__ = ["NodeContext", "WorkingSet", "plan_summary", "recent_window"]

log = logging.getLogger("troupe.hot")

REF_PREVIEW_CHARS = 160


@dataclass(frozen=True)
class NodeContext:
    """What an agent node's next model turn is assembled from."""

    pins: list[str]
    plan: str
    """The plan summary: one line per node."""
    digest: str | None
    recent: list[dict[str, Any]]
    """transcript[compacted:], tool outputs older than the last N replaced by references."""


@dataclass
class HotStats:
    hits: int = 0
    """Entries served from hot memory."""
    rebuilt: int = 0
    """Entries rebuilt from the log (missing, evicted, expired or behind)."""


def plan_summary(plan: Plan | None) -> str:
    if plan is None:
        return ""
    lines = []
    for n in plan.nodes:
        what = f"agent (tools: {', '.join(n.tools)})" if n.kind == "agent" else f"tool {n.tool}"
        after = f"; after {', '.join(n.deps)}" if n.deps else ""
        lines.append(f"- {n.id}: {what}{after}")
    return "\n".join(lines)


def recent_window(transcript: list[dict[str, Any]], compacted: int, recent: int) -> list[dict[str, Any]]:
    """transcript[compacted:] with every tool output but the last `recent` replaced by a
    reference into the log (unless the output is shorter than its reference): what
    `WorkingSet.node_context` returns, computed from the log alone."""
    window = transcript[compacted:]
    tool_at = [i for i, m in enumerate(window) if m.get("role") == "tool"]
    old = set(tool_at[:max(0, len(tool_at) - recent)])
    return [_referenced(m) if i in old else m for i, m in enumerate(window)]


def _referenced(m: dict[str, Any]) -> dict[str, Any]:
    content = str(m.get("content", ""))
    ref = (f"[older output, kept whole in the task's log (tool.result of call {m.get('tool_call_id')}, "
           f"{len(content)} chars); it began: {content[:REF_PREVIEW_CHARS]}]")
    return m if len(content) <= len(ref) else {**m, "content": ref}


class WorkingSet:
    """Reads a node's context from hot memory, rebuilding from the log's fold what it lacks.
    With `hot` None (no Redis configured) every read is a rebuild and nothing is written."""

    def __init__(self, hot: HotStore | None, *, recent_outputs: int = 8):
        if recent_outputs < 1:
            raise ValueError(f"recent_outputs ({recent_outputs}) must be >= 1; check TROUPE_HOT_RECENT_OUTPUTS")
        self.hot = hot
        self.recent_outputs = recent_outputs
        self.stats = HotStats()

    async def node_context(self, task: Task, node_id: str) -> NodeContext:
        state = task.nodes[node_id]
        names = ["pins", "plan", f"n:{node_id}:digest", f"n:{node_id}:win"]
        raw = await self.hot.get(task.tenant, task.id, names) if self.hot else [None] * 4
        pins_e, plan_e, digest_e, win_e = (_json(v) for v in raw)
        writes: list[HotEntry] = []

        def entry(name: str, value: Any, pinned: bool) -> None:
            self.stats.rebuilt += 1
            writes.append(HotEntry(task.id, name, json.dumps(value, ensure_ascii=False, separators=(",", ":")), pinned))

        if pins_e is not None and pins_e.get("n") == len(task.pinned_requirements):
            self.stats.hits += 1
            pins = list(pins_e["pins"])
        else:
            pins = list(task.pinned_requirements)
            entry("pins", {"n": len(pins), "pins": pins}, True)
        tag = _plan_tag(task.plan)
        if plan_e is not None and plan_e.get("tag") == tag:
            self.stats.hits += 1
            plan = str(plan_e["text"])
        else:
            plan = plan_summary(task.plan)
            entry("plan", {"tag": tag, "text": plan}, True)
        node_tag = _node_tag(task, node_id)
        if digest_e is not None and digest_e.get("upto") == state.compacted and digest_e.get("tag") == node_tag:
            self.stats.hits += 1
            digest = digest_e["digest"]
        else:
            digest = state.digest
            entry(f"n:{node_id}:digest", {"tag": node_tag, "upto": state.compacted, "digest": digest}, True)
        recent, stale_outputs = await self._window(task, node_id, win_e, writes)
        if self.hot is not None:
            if writes:
                await self.hot.put(task.tenant, writes)
            await self.hot.drop(task.tenant, task.id, stale_outputs)
        return NodeContext(pins=pins, plan=plan, digest=digest, recent=recent)

    async def _window(self, task: Task, node_id: str, win: dict[str, Any] | None,
                      writes: list[HotEntry]) -> tuple[list[dict[str, Any]], list[str]]:
        """The node's recent turns: the hot window's (its outputs read back), extended by the
        turns the log has beyond it; rewritten when it changed. Returns it and the output
        entries that fell out of the last N."""
        state = task.nodes[node_id]
        start, transcript, tag = state.compacted, state.transcript, _node_tag(task, node_id)
        stored: list[dict[str, Any]] = []
        if (win is not None and win.get("tag") == tag and win.get("from") == start
                and len(win.get("messages", ())) == win.get("to", -1) - start and win["to"] <= len(transcript)):
            self.stats.hits += 1
            stored = list(win["messages"])
        pointed = {i: m["hot"] for i, m in enumerate(stored) if "hot" in m}
        outputs = await self.hot.get(task.tenant, task.id, list(pointed.values())) if self.hot and pointed else []
        for (i, name), content in zip(pointed.items(), outputs, strict=True):
            if content is None:  # evicted or expired: the log has it
                self.stats.rebuilt += 1
                content = str(transcript[start + i].get("content", ""))
                writes.append(HotEntry(task.id, name, content))
            else:
                self.stats.hits += 1
            stored[i] = {k: v for k, v in stored[i].items() if k != "hot"} | {"content": content}
        messages = stored + transcript[start + len(stored):]
        # The last N outputs whole, older ones as references (those stored unpointed are already).
        tools = [i for i, m in enumerate(messages) if m.get("role") == "tool"]
        last = set(tools[-self.recent_outputs:])
        recent = [_referenced(m) if m.get("role") == "tool" and i not in last and (i in pointed or i >= len(stored))
                  else m for i, m in enumerate(messages)]
        if stored and len(stored) == len(messages):
            return recent, []  # nothing new since the hot window was written
        if not stored:
            self.stats.rebuilt += 1
        hot_msgs = []
        for i, m in enumerate(recent):
            if i in last:
                name = f"n:{node_id}:out:{m.get('tool_call_id')}"
                hot_msgs.append({k: v for k, v in m.items() if k != "content"} | {"hot": name})
                if i not in pointed:
                    writes.append(HotEntry(task.id, name, str(m.get("content", ""))))
            else:
                hot_msgs.append(m)
        writes.append(HotEntry(task.id, f"n:{node_id}:win", json.dumps(
            {"tag": tag, "from": start, "to": len(transcript), "messages": hot_msgs},
            ensure_ascii=False, separators=(",", ":"))))
        return recent, [name for i, name in pointed.items() if i not in last]

    async def forget_node(self, task: Task, node_id: str) -> None:
        """The node has ended: its entries go, and the task's own once no agent node of it may run."""
        if self.hot is None:
            return
        state = task.nodes.get(node_id)
        outs = [f"n:{node_id}:out:{m.get('tool_call_id')}" for m in (state.transcript if state else [])
                if m.get("role") == "tool"]
        await self.hot.drop(task.tenant, task.id, [f"n:{node_id}:digest", f"n:{node_id}:win", *outs])
        agents = [n.id for n in task.plan.nodes if n.kind == "agent"] if task.plan else []
        if all(task.nodes[a].status in (NodeStatus.done, NodeStatus.failed) for a in agents if a in task.nodes):
            await self.hot.drop(task.tenant, task.id, ["pins", "plan"])


def _node_tag(task: Task, node_id: str) -> str:
    """Which definition of the node an entry belongs to: a new iteration or correction round
    starts its transcript afresh."""
    return f"{task.iteration}.{task.nodes[node_id].round}"


def _plan_tag(plan: Plan | None) -> str:
    if plan is None:
        return "none"
    return hashlib.sha1(plan.model_dump_json().encode(), usedforsecurity=False).hexdigest()[:16]


def _json(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:  # not ours, or cut short: rebuilt like a miss
        return None
    return value if isinstance(value, dict) else None
