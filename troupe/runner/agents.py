"""Agent nodes: a tool-calling loop in which every model turn and every call result is an
event, so a drive that resumes mid-loop rebuilds the conversation and repeats no call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from memory.store import NewEvent
from memory.working_set import NodeContext
from troupe.context import DEFAULT_WINDOW, assemble, compact, prompt_budget
from troupe.llm import ChatRequest, LLMReply, ToolCallRequest
from troupe.models import EventType, NodeState, NodeStatus, PlanNode, TaskStatus
from troupe.planner import pinned_block
from troupe.plans import ReferenceError_, resolve_args
from troupe.routing import owned
from troupe.runner.base import RunnerBase
from troupe.tool_calls import ToolCall
from troupe.tracing import carrier, span

__all__ = ["AgentLoop"]

AGENT_SYSTEM = """\
You are an agent node of a Troupe task. Reach the goal you are given by calling the tools
you have; calls in one turn run in parallel. When you have what you need, answer with the
final result as plain text and no tool call. Never repeat a call whose result you have."""
REPEAT_MARK = "Not run: identical to an earlier call"
TOOL_RESULT_CHARS = 8000


class AgentLoop(RunnerBase):
    async def _run_agent(self, node: PlanNode) -> None:
        """A tool-calling loop. Every model turn and every call result is an event, so a
        drive that resumes mid-loop rebuilds the conversation and repeats no finished call."""
        task = self.task
        assert task is not None
        state = task.nodes[node.id]
        if self.llm is None:
            await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id,
                                                              "error": "agent nodes need a model; configure one"}))
            return
        outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
        try:
            instructions = resolve_args(node.instructions or "", outputs)
        except ReferenceError_ as exc:
            await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error": str(exc)}))
            return
        if state.status == NodeStatus.pending:
            await self._emit(NewEvent(EventType.node_started, {"node_id": node.id, "attempt": 1,
                                                               "idempotency_key": self._key(node.id)}))
        specs = [{"type": "function", "function": {"name": t, "description": self.tools.get(t).description,
                                                   "parameters": self.tools.get(t).parameters}}
                 for t in node.tools if t in self.tools]
        with span("agent", task_id=self.task_id, node_id=node.id):
            try:
                await self._agent_turns(node, state, instructions, specs)
            finally:
                if state.status in (NodeStatus.done, NodeStatus.failed):
                    await self.working_set.forget_node(task, node.id)

    async def _agent_turns(self, node: PlanNode, state: NodeState, instructions: str,
                           specs: list[dict[str, Any]]) -> None:
        task = self.task
        assert task is not None
        while True:
            pending = _pending_calls(state.transcript)
            if pending:
                if await self._agent_calls(node, state, pending):
                    return
                continue
            if task.interrupts:
                return  # a safe point: the DAG revises the plan, then this node goes on (or is redefined)
            turns = sum(1 for m in state.transcript if m.get("role") == "assistant")
            if turns >= node.max_steps:
                await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error":
                    f"agent stopped after max_steps={node.max_steps} model turns without a final answer"}))
                return
            await self._check_budget(TaskStatus.executing)
            window = await self._context_window(node.model_group)
            # Pins, plan, digest and recent turns come from the hot working set (the log's fold when it lacks them).
            ctx = await self.working_set.node_context(task, node.id)
            head = _head(ctx, node.id, instructions)
            done = compact(head, specs or None, state.transcript, state.compacted, state.digest,
                           prompt_budget(window))
            if done is not None:  # an event: a resumed drive reuses it instead of compacting again
                await self._emit(NewEvent(EventType.context_compacted, {
                    "node_id": node.id, "upto": done.upto, "digest": done.digest, "steps": list(done.steps),
                    "replaced": done.upto - state.compacted, "window": window}))
                ctx = await self.working_set.node_context(task, node.id)
            messages = assemble(head, ctx.digest, ctx.recent)
            try:
                reply: LLMReply = await self.llm.chat(ChatRequest(
                    group=node.model_group, messages=messages, tools=specs or None, task_id=self.task_id))
            except Exception as exc:
                await self._model_unavailable(exc, TaskStatus.executing)
            step = NewEvent(EventType.agent_step, {"node_id": node.id, "step": turns + 1,
                                                   "message": reply.assistant_message()})
            if not reply.tool_calls:
                await self._emit(self._usage_event(reply.usage, f"agent:{node.id}"), step,
                                 NewEvent(EventType.node_done, {"node_id": node.id, "output": {
                                     "answer": reply.content or "", "steps": turns + 1,
                                     "tool_calls": state.tool_calls}}))
                return
            await self._emit(self._usage_event(reply.usage, f"agent:{node.id}"), step)

    async def _context_window(self, group: str) -> int:
        if group not in self._windows:
            try:
                window = await self.llm.context_window(group)  # type: ignore[union-attr]
            except Exception:  # a router that cannot say: assume a common window
                window = None
            self._windows[group] = window or DEFAULT_WINDOW
        return self._windows[group]

    async def _agent_calls(self, node: PlanNode, state: NodeState, pending: list[ToolCallRequest]) -> bool:
        """Run one turn's calls in parallel; returns True when the node has ended (stuck)."""
        earlier = _call_signatures(state.transcript, exclude={c.id for c in pending})
        nudged = any(str(m.get("content", "")).startswith(REPEAT_MARK) for m in state.transcript
                     if m.get("role") == "tool")
        results: list[NewEvent] = []
        to_run: list[tuple[ToolCallRequest, dict[str, Any]]] = []
        for call in pending:
            problem, args = self._agent_call_problem(node, call)
            if problem:
                results.append(_agent_result(node.id, call.id, error=problem))
            elif _signature(call.name, args) in earlier:
                if nudged:
                    await self._emit(*results, NewEvent(EventType.node_failed, {"node_id": node.id, "error":
                        f"agent stuck: it repeated the identical call {call.name}({_short(args)}) after being "
                        "told to change strategy"}))
                    return True
                nudged = True
                results.append(_agent_result(node.id, call.id, content=(
                    f"{REPEAT_MARK} ({call.name} with the same arguments); its result is above. Change strategy: "
                    "use other arguments or another tool, or give your final answer.")))
            else:
                earlier.add(_signature(call.name, args))
                to_run.append((call, args))
        if results:
            await self._emit(*results)
        await asyncio.gather(*[self._agent_call(node, call, args) for call, args in to_run])
        return node.id in self._in_doubt  # the node waits for the user's word on a call

    def _agent_call_problem(self, node: PlanNode, call: ToolCallRequest) -> tuple[str | None, dict[str, Any]]:
        if call.name not in node.tools:
            return f"tool {call.name!r} is not allowed here; allowed: {', '.join(node.tools)}", {}
        try:
            args = call.args()
        except ValueError as exc:
            return f"the arguments are not a JSON object: {exc}", {}
        try:
            self.tools.get(call.name).validate(args)
        except ValueError as exc:
            return str(exc), args
        # A node that owns files writes only those: a correction routed to a file's owner
        # then reaches the one node that can have written it.
        if node.owns and call.name == "files" and args.get("action") == "write" \
                and not owned(node.owns, str(args.get("path", ""))):
            return (f"node {node.id!r} may write only the files it owns ({', '.join(node.owns)}), "
                    f"not {args.get('path')!r}"), args
        return None, args

    async def _agent_call(self, node: PlanNode, call: ToolCallRequest, args: dict[str, Any]) -> None:
        task = self.task
        assert task is not None
        key = f"{self._key(node.id)}:{call.id}"
        if call.id not in task.nodes[node.id].unknown_calls:
            await self._emit(NewEvent(EventType.tool_called, {"node_id": node.id, "call_id": call.id,
                                                              "tool": call.name, "args": args, "idempotency_key": key}))
        request = ToolCall(tool=call.name, args=args, task_id=self.task_id, tenant=task.tenant, node_id=node.id,
                           idempotency_key=key, trace=carrier(), epoch=self.epoch,
                           side_effects=self._side_effects(node, call.name),
                           confirmed_runs=task.nodes[node.id].confirmed_calls.get(call.id))
        outcome = await self._call(request, node.timeout_s)
        if outcome.in_doubt:
            return self._doubt(request, outcome, call_id=call.id)
        result = _agent_result(node.id, call.id, output=outcome.output, error=outcome.error, ok=outcome.ok,
                               duration_s=outcome.duration_s)
        result.payload.update(idempotency_key=key, tool=call.name)
        if request.side_effects:
            result.payload["side_effects"] = True
        await self._emit(result)


def _head(ctx: NodeContext, node_id: str, instructions: str) -> list[dict[str, Any]]:
    """The system prompt (pinned requirements, the node's place in the plan) and its instructions."""
    plan = f"The task's plan; you are node {node_id}:\n{ctx.plan}" if ctx.plan else None
    system = "\n\n".join(filter(None, [AGENT_SYSTEM, pinned_block(ctx.pins), plan]))
    return [{"role": "system", "content": system}, {"role": "user", "content": instructions}]


def _pending_calls(transcript: list[dict[str, Any]]) -> list[ToolCallRequest]:
    """Calls of the last model turn that have no result yet."""
    last = max((i for i, m in enumerate(transcript) if m.get("role") == "assistant"), default=None)
    if last is None:
        return []
    answered = {m.get("tool_call_id") for m in transcript[last + 1:] if m.get("role") == "tool"}
    return [ToolCallRequest(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments") or "{}")
            for c in transcript[last].get("tool_calls") or [] if c["id"] not in answered]


def _signature(name: str, args: dict[str, Any]) -> str:
    return name + json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)


def _call_signatures(transcript: list[dict[str, Any]], exclude: set[str]) -> set[str]:
    sigs = set()
    for m in transcript:
        for c in m.get("tool_calls") or []:
            if c["id"] in exclude:
                continue
            try:
                args = json.loads(c["function"].get("arguments") or "{}")
            except json.JSONDecodeError:
                continue
            if isinstance(args, dict):
                sigs.add(_signature(c["function"]["name"], args))
    return sigs


def _short(args: dict[str, Any]) -> str:
    text = json.dumps(args, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _agent_result(node_id: str, call_id: str, *, output: Any = None, error: str | None = None, ok: bool = False,
                  content: str | None = None, duration_s: float = 0.0) -> NewEvent:
    """A call's result, with the text the model will see (cut to size)."""
    payload: dict[str, Any] = {"node_id": node_id, "call_id": call_id, "duration_s": round(duration_s, 6)}
    if content is not None:
        payload["skipped"] = True
    elif ok:
        payload["output"] = output
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
        content = text if len(text) <= TOOL_RESULT_CHARS else text[:TOOL_RESULT_CHARS] + " ... (cut)"
    else:
        payload["error"] = error
        content = f"error: {error}"
    payload["content"] = content
    return NewEvent(EventType.tool_result, payload)
