"""The chaos harness: a seeded workload, a seeded killer, a scripted user, and a checker
that judges the run from an external ledger and the event logs only.

Used by tests/chaos/test_chaos.py (short runs in `make test`) and bench/chaos.py (long runs).
The killer SIGKILLs, at random moments, the Conductor replica, a ToolPool replica, the
Supervisor, or every process of the Serve app (which it then deploys again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from memory.store import EventStore
from tests.chaos.tools import combine
from troupe.models import Event, EventType, TaskStatus

__all__ = ["ChaosRun", "Killer", "agent_reply", "check", "workload"]

log = logging.getLogger("troupe.chaos")

TARGETS = {"conductor": 3, "toolpool": 3, "supervisor": 2, "app": 1}
AGENT_MARK = re.compile(r"chaos-agent (\S+) ledger=(\S+):")


# -- the workload ---------------------------------------------------------------------------


def workload(rng: random.Random, n: int, ledger: str) -> list[dict[str, Any]]:
    """`n` submissions: parallel fan-outs, a retried flaky step, a side-effecting send and
    an agent node (scripted model) in a mix, each joined into a final step."""
    out = []
    for i in range(n):
        tag = f"t{i}"
        nodes: list[dict[str, Any]] = []
        fan = [f"s{j}" for j in range(rng.randint(2, 4))]
        for j, nid in enumerate(fan):
            nodes.append({"id": nid, "tool": "chaos_step", "args": {
                "ledger": ledger, "value": f"{tag}{nid}", "sleep_s": round(rng.uniform(0.05, 0.8), 2)}})
        if rng.random() < 0.5:
            nodes.append({"id": "flaky", "tool": "chaos_flaky", "retry": {"max_attempts": 4, "backoff_s": 0.05},
                          "args": {"ledger": ledger, "value": f"{tag}flaky", "fail_times": rng.randint(1, 2)}})
            fan.append("flaky")
        nodes.append({"id": "join", "tool": "chaos_step", "deps": fan, "args": {
            "ledger": ledger, "value": f"{tag}join", "inputs": [f"{{{{{d}.output}}}}" for d in fan],
            "sleep_s": round(rng.uniform(0.05, 0.4), 2)}})
        last = ["join"]
        inputs = ["{{join.output}}"]
        if rng.random() < 0.7:
            nodes.append({"id": "send", "tool": "chaos_send", "deps": ["join"], "args": {
                "ledger": ledger, "to": tag, "body": "{{join.output}}", "sleep_s": round(rng.uniform(0.05, 0.6), 2)}})
            last.append("send")
            inputs.append("{{send.output}}")
        if rng.random() < 0.4:
            nodes.append({"id": "agent", "kind": "agent", "deps": ["join"], "tools": ["chaos_step", "chaos_send"],
                          "max_steps": 3, "instructions": f"chaos-agent {tag}a ledger={ledger}: {{{{join.output}}}}"})
            last.append("agent")
            inputs.append("{{agent.output.answer}}")
        nodes.append({"id": "final", "tool": "chaos_step", "deps": last, "args": {
            "ledger": ledger, "value": f"{tag}final", "inputs": inputs}})
        out.append({"goal": f"chaos task {tag}", "plan": {"nodes": nodes}, "metadata": {"chaos": tag}})
    return out


def agent_reply(body: dict[str, Any]) -> Any:
    """The scripted model of agent nodes, a pure function of the conversation, so a turn
    asked again after a crash gets the same answer: first call a step and a send in
    parallel, then answer with both results."""
    messages = body.get("messages", [])
    mark = next((AGENT_MARK.search(str(m.get("content"))) for m in messages
                 if m.get("role") == "user" and AGENT_MARK.search(str(m.get("content")))), None)
    if mark is None:
        return "no chaos agent here"
    tag, ledger = mark.groups()
    results = sorted(str(m.get("content")) for m in messages if m.get("role") == "tool")
    if not results:
        return [{"id": f"{tag}-step", "name": "chaos_step", "arguments": {"ledger": ledger, "value": f"{tag}-look"}},
                {"id": f"{tag}-send", "name": "chaos_send", "arguments": {"ledger": ledger, "to": tag, "body": "look"}}]
    return f"agent {tag}: " + " / ".join(results)


def expected_agent_answer(tag: str) -> str:
    return f"agent {tag}: " + " / ".join(sorted([combine(f"{tag}-look", []), f"sent to {tag}: look"]))


# -- the killer -----------------------------------------------------------------------------


def _pids(prefix: str) -> list[int]:
    """Live actors' pids from the GCS (the state API would need the dashboard)."""
    import ray._private.state as state

    pids = [int(a["Pid"]) for a in state.actors().values()
            if a.get("State") == "ALIVE" and str(a.get("Name") or "").startswith(prefix) and a.get("Pid")]
    return [pid for pid in pids if _is_actor_worker(pid)]


def _is_actor_worker(pid: int) -> bool:
    """Only ever SIGKILL a Ray actor's worker process: never a raylet, nor a reused pid."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return title.startswith("ray::") and "raylet" not in title


@dataclass
class Killer:
    """SIGKILLs processes of one Serve app. `redeploy` brings the app back after `app` kills."""

    app_name: str
    redeploy: Callable[[], None]
    rng: random.Random
    max_app_kills: int = 1
    kills: Counter = field(default_factory=Counter)
    processes: Counter = field(default_factory=Counter)

    def pick(self) -> str:
        targets = {t: w for t, w in TARGETS.items() if t != "app" or self.kills["app"] < self.max_app_kills}
        return self.rng.choices(list(targets), weights=list(targets.values()))[0]

    def kill(self, target: str) -> int:
        """SIGKILL the target's processes; returns how many died."""
        prefix = {"conductor": f"SERVE_REPLICA::{self.app_name}#Conductor",
                  "toolpool": f"SERVE_REPLICA::{self.app_name}#ToolPool",
                  "supervisor": f"{self.app_name}-supervisor",
                  "app": f"SERVE_REPLICA::{self.app_name}#"}[target]
        deadline = time.monotonic() + 20
        while not (pids := _pids(prefix)) and time.monotonic() < deadline:
            time.sleep(0.2)  # a replacement from the last kill is still starting
        if target == "toolpool" and pids:
            pids = [self.rng.choice(sorted(pids))]  # one replica
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.kills[target] += 1
        self.processes[target] += len(pids)
        if target == "app":
            from ray import serve

            serve.delete(self.app_name)
            self.redeploy()
        return len(pids)


# -- the run --------------------------------------------------------------------------------


@dataclass
class ChaosRun:
    """One seeded run against a deployed app: submit, kill, answer, wait; then `check`."""

    base_url: str
    store: EventStore
    ledger: Path
    seed: int
    tasks: int
    kills: int
    app_name: str
    redeploy: Callable[[], None]
    max_app_kills: int = 1
    timeout_s: float = 600.0
    tenant: str = "chaos"
    api_key: str = ""
    """An admin key of the app (it acts for `tenant`)."""
    task_ids: list[str] = field(default_factory=list)
    replies: int = 0

    async def _http(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request that rides out the app being down (killed, redeploying)."""
        deadline = time.monotonic() + 300
        headers = {"X-Troupe-Tenant": self.tenant, "Authorization": f"Bearer {self.api_key}"}
        while True:
            try:
                async with httpx.AsyncClient(base_url=self.base_url, timeout=30, headers=headers) as c:
                    r = await c.request(method, path, **kw)
                if r.status_code < 500 and r.status_code != 404 or time.monotonic() > deadline:
                    return r
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    async def _submit(self, batch: list[dict[str, Any]]) -> None:
        for body in batch:
            # A submission retried after its response was lost (an app kill) finds its task.
            key = f"chaos-{self.seed}-{len(self.task_ids)}"
            r = await self._http("POST", "/v1/tasks", json=body, headers={"Idempotency-Key": key})
            assert r.status_code == 202, r.text
            self.task_ids.append(r.json()["task_id"])

    async def _statuses(self) -> dict[str, TaskStatus]:
        rows, _ = await self.store.list_tasks(self.tenant, limit=2 * len(self.task_ids) + 10)
        return {r.task_id: r.status for r in rows}

    async def _user(self, stop: asyncio.Event) -> None:
        """The scripted user: every question about a call in doubt gets `retry`."""
        answered: set[tuple[str, int]] = set()
        while not stop.is_set():
            for tid, status in (await self._statuses()).items():
                if status != TaskStatus.waiting_for_input:
                    continue
                row = await self.store.get(tid)
                if row is None or row.status != TaskStatus.waiting_for_input or (tid, row.last_seq) in answered:
                    continue
                answered.add((tid, row.last_seq))
                # Keyed: a reply re-sent after a lost response (an app kill) is the same reply, not
                # a second message that would start a follow-up once the task is done.
                r = await self._http("POST", f"/v1/tasks/{tid}/messages", json={"text": "retry"},
                                     headers={"Idempotency-Key": f"chaos-reply-{tid}-{row.last_seq}"})
                if r.status_code == 202:
                    self.replies += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> dict[str, Any]:
        rng = random.Random(self.seed)
        work = workload(rng, self.tasks, str(self.ledger))
        killer = Killer(self.app_name, self.redeploy, random.Random(rng.random()), self.max_app_kills)
        chunks = [work[i::self.kills + 1] for i in range(self.kills + 1)]
        started = time.monotonic()
        stop = asyncio.Event()
        in_flight = 0
        user = asyncio.create_task(self._user(stop))
        try:
            await self._submit(chunks[0])
            for chunk in chunks[1:]:
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                target = killer.pick()
                statuses = await self._statuses()
                in_flight += sum(1 for t in self.task_ids if t in statuses and not statuses[t].terminal)
                died = await asyncio.to_thread(killer.kill, target)
                log.info("chaos seed %s: killed %s (%d processes)", self.seed, target, died)
                await self._submit(chunk)
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                statuses = await self._statuses()
                if all(tid in statuses and statuses[tid].terminal for tid in self.task_ids):
                    break
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await user
        return {"seed": self.seed, "tasks": self.tasks, "kills": dict(killer.kills),
                "processes_killed": dict(killer.processes), "unfinished_tasks_at_kills": in_flight,
                "user_replies": self.replies, "duration_s": round(time.monotonic() - started, 1)}


# -- the checker ----------------------------------------------------------------------------


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def check(store: EventStore, task_ids: list[str], ledger: Path) -> dict[str, Any]:
    """Judge the run from the external ledger and the logs. Returns the figures and the
    list of violations (empty when every promise held)."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in read_ledger(ledger):
        runs[line["key"]].append(line)
    violations: list[str] = []
    figures: Counter = Counter()
    for tid in task_ids:
        log_ = await store.read(tid)
        figures["events"] += len(log_)
        if [e.seq for e in log_] != list(range(1, len(log_) + 1)):
            violations.append(f"{tid}: seq not dense")
        _check_task(tid, log_, runs, violations, figures)
    figures["executions"] = sum(1 for lines in runs.values() for x in lines if x["what"] == "start")
    return {"violations": violations, **figures}


def _check_task(tid: str, log_: list[Event], runs: dict[str, list[dict[str, Any]]], violations: list[str],
                figures: Counter) -> None:
    from troupe.reducer import reduce

    task = reduce(log_)
    assert task is not None
    if task.status != TaskStatus.done:
        violations.append(f"{tid}: ended {task.status.value}: {task.reason}")
        return
    figures["done"] += 1
    figures["redispatches"] += sum(1 for e in log_ if e.type == EventType.dispatched) - 1
    figures["replayed_results"] += sum(1 for e in log_ if e.type == EventType.tool_result and e.payload.get("replayed"))
    recorded: dict[str, float] = {}
    asked: Counter = Counter()
    for e in log_:
        key = e.payload.get("idempotency_key")
        if e.type == EventType.tool_result and key and "output" in e.payload and key not in recorded:
            recorded[key] = e.ts.timestamp()
        if e.type == EventType.status and e.payload.get("waiting_on") == "side_effects":
            figures["in_doubt_questions"] += 1
            for c in e.payload.get("calls", []):
                asked[c["idempotency_key"]] += 1  # each question was answered `retry`
    for key, ts in recorded.items():
        again = [x for x in runs.get(key, []) if x["what"] == "start" and x["ts"] > ts]
        if again:
            violations.append(f"{tid}: {key} ran again after its outcome was recorded")
    sends = {k: v for k, v in runs.items() if k.startswith(tid) and (k.endswith(":send") or k.endswith("-send"))}
    for key, lines in sends.items():
        starts = sum(1 for x in lines if x["what"] == "start")
        if starts > 1 + asked[key]:
            violations.append(f"{tid}: side-effecting {key} ran {starts} times with {asked[key]} user retries")
        figures["side_effect_reruns_on_retry"] += max(0, starts - 1)
    _check_outputs(tid, task, violations)


def _check_outputs(tid: str, task: Any, violations: list[str]) -> None:
    """Every node's final output follows from its upstream nodes' final outputs."""
    assert task.plan is not None
    out = {n.id: task.nodes[n.id].output for n in task.plan.nodes}
    for node in task.plan.nodes:
        got = out[node.id]
        if node.kind == "agent":
            tag = AGENT_MARK.search(node.instructions or "").group(1)  # type: ignore[union-attr]
            want: Any = expected_agent_answer(tag)
            got = (got or {}).get("answer")
        elif node.tool == "chaos_send":
            want = f"sent to {node.args['to']}: {out['join']}"
        elif node.tool == "chaos_flaky":
            want = combine(node.args["value"], [])
        else:
            inputs = [_resolve(ref, out) for ref in node.args.get("inputs", [])]
            want = combine(node.args["value"], inputs)
        if got != want:
            violations.append(f"{tid}: node {node.id} output {got!r} != {want!r} from its upstream outputs")


def _resolve(ref: str, out: dict[str, Any]) -> Any:
    m = re.fullmatch(r"\{\{(\w+)\.output(?:\.(\w+))?\}\}", ref)
    assert m, ref
    value = out[m.group(1)]
    return value[m.group(2)] if m.group(2) else value
