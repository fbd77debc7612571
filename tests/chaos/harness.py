"""The chaos harness: a seeded workload, a seeded killer, a scripted user, and a checker
that judges the run from an external ledger and the event logs only.

Used by tests/chaos/test_chaos.py (short runs in `make test`) and bench/chaos.py (long runs).
The killer SIGKILLs, at random moments, the Conductor replica, a ToolPool replica, a
BrowserPool replica, the Supervisor, or every process of the Serve app (which it then
deploys again). The scripted user answers each question about a call in doubt with
`retry` or, now and then, `skip`.
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
from tests.chaos.site import page_title
from tests.chaos.tools import combine
from troupe.models import Event, EventType, TaskStatus

__all__ = ["ChaosRun", "Killer", "agent_reply", "check", "workload"]

log = logging.getLogger("troupe.chaos")

TARGETS = {"conductor": 3, "toolpool": 3, "browserpool": 2, "supervisor": 2, "app": 1}
SKIP_SHARE = 0.3
"""Share of the questions about calls in doubt the scripted user answers `skip` (else `retry`)."""

AGENT_MARK = re.compile(r"chaos-agent (\S+) ledger=(\S+):")


# -- the workload ---------------------------------------------------------------------------


def workload(rng: random.Random, n: int, ledger: str, site_url: str) -> list[dict[str, Any]]:
    """`n` submissions: parallel fan-outs, a retried flaky step, a browser step reading the
    task's page on `site_url`, a side-effecting send and an agent node (scripted model) in a
    mix, each joined into a final step."""
    out = []
    for i in range(n):
        tag = f"t{i}"
        nodes: list[dict[str, Any]] = []
        fan = [f"s{j}" for j in range(rng.randint(2, 4))]
        for j, nid in enumerate(fan):
            nodes.append({"id": nid, "tool": "chaos_step", "args": {
                "ledger": ledger, "value": f"{tag}{nid}", "sleep_s": round(rng.uniform(0.05, 0.8), 2)}})
        inputs = [f"{{{{{d}.output}}}}" for d in fan]
        if rng.random() < 0.5:
            nodes.append({"id": "flaky", "tool": "chaos_flaky", "retry": {"max_attempts": 4, "backoff_s": 0.05},
                          "args": {"ledger": ledger, "value": f"{tag}flaky", "fail_times": rng.randint(1, 2)}})
            fan.append("flaky")
            inputs.append("{{flaky.output}}")
        if rng.random() < 0.3:
            # A killed BrowserPool replica fails the call retryably; the retries outlast its restart.
            nodes.append({"id": "look", "tool": "browse", "retry": {"max_attempts": 6, "backoff_s": 1.0},
                          "args": {"url": f"{site_url}/chaos/{tag}", "settle_s": 0.2, "max_links": 0}})
            fan.append("look")
            inputs.append("{{look.output.title}}")
        nodes.append({"id": "join", "tool": "chaos_step", "deps": fan, "args": {
            "ledger": ledger, "value": f"{tag}join", "inputs": inputs,
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


def expected_agent_answer(tag: str, send_result: str | None = None) -> str:
    """The agent's answer from its two calls' results (`send_result`: what the model was told
    of a send the user skipped)."""
    return f"agent {tag}: " + " / ".join(sorted([combine(f"{tag}-look", []), send_result or f"sent to {tag}: look"]))


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
                  "browserpool": f"SERVE_REPLICA::{self.app_name}#BrowserPool",
                  "supervisor": f"{self.app_name}-supervisor",
                  "app": f"SERVE_REPLICA::{self.app_name}#"}[target]
        deadline = time.monotonic() + 20
        while not (pids := _pids(prefix)) and time.monotonic() < deadline:
            time.sleep(0.2)  # a replacement from the last kill is still starting
        if target in ("toolpool", "browserpool") and pids:
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
    site_url: str
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
    replies: Counter = field(default_factory=Counter)

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
        """The scripted user: each question about a call in doubt gets `retry`, or `skip`
        (a seeded choice per question)."""
        answered: dict[str, int] = {}  # task -> seq of the last question answered
        while not stop.is_set():
            for tid, status in (await self._statuses()).items():
                if status != TaskStatus.waiting_for_input:
                    continue
                questions = [e.seq for e in await self.store.read(tid, after_seq=answered.get(tid, 0))
                             if e.type == EventType.status and e.payload.get("waiting_on") == "side_effects"]
                if not questions:
                    continue  # answered already (the driver has yet to read it), or waiting on a model
                answered[tid] = question = questions[-1]
                answer = "skip" if random.Random(f"{self.seed}:{tid}:{question}").random() < SKIP_SHARE else "retry"
                # Keyed: a reply re-sent after a lost response (an app kill) is the same reply, not
                # a second message that would start a follow-up once the task is done.
                r = await self._http("POST", f"/v1/tasks/{tid}/messages", json={"text": answer},
                                     headers={"Idempotency-Key": f"chaos-reply-{tid}-{question}"})
                if r.status_code == 202:
                    self.replies[answer] += 1
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> dict[str, Any]:
        rng = random.Random(self.seed)
        work = workload(rng, self.tasks, str(self.ledger), self.site_url)
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
                "user_replies": dict(self.replies), "duration_s": round(time.monotonic() - started, 1)}


# -- the checker ----------------------------------------------------------------------------


def read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def check(store: EventStore, task_ids: list[str], ledger: Path,
                hits: list[tuple[float, str]] = ()) -> dict[str, Any]:
    """Judge the run from the external ledgers (the tools' file, the site's hits) and the
    logs. Returns the figures and the list of violations (empty when every promise held)."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in read_ledger(ledger):
        runs[line["key"]].append(line)
    pages: dict[str, list[float]] = defaultdict(list)
    for ts, path in hits:
        pages[path.removeprefix("/chaos/")].append(ts)
    violations: list[str] = []
    figures: Counter = Counter()
    for tid in task_ids:
        log_ = await store.read(tid)
        figures["events"] += len(log_)
        if [e.seq for e in log_] != list(range(1, len(log_) + 1)):
            violations.append(f"{tid}: seq not dense")
        _check_task(tid, log_, runs, pages, violations, figures)
    figures["executions"] = sum(1 for lines in runs.values() for x in lines if x["what"] == "start")
    # Not promises, but worth seeing: idempotent steps that ran again before their outcome was
    # recorded (in flight at a kill), and questions about a run that had in fact finished.
    figures["idempotent_reruns"] = sum(max(0, sum(1 for x in lines if x["what"] == "start") - 1
                                           - sum(1 for x in lines if x["what"] == "fail"))  # a flaky step's retries
                                       for key, lines in runs.items() if not _is_send(key))
    return {"violations": violations, **figures}


def _is_send(key: str) -> bool:
    return key.endswith((":send", "-send"))


def _answers(log_: list[Event], figures: Counter) -> tuple[Counter, dict[str, float], dict[str, float]]:
    """The user's answers about calls in doubt: (retries per key, skip time per key, question time per key)."""
    retried: Counter = Counter()
    skipped: dict[str, float] = {}
    asked_at: dict[str, float] = {}
    asked: list[str] = []
    for e in log_:
        if e.type == EventType.status and e.payload.get("waiting_on") == "side_effects":
            figures["in_doubt_questions"] += 1
            asked = [c["idempotency_key"] for c in e.payload.get("calls", [])]
            for key in asked:
                asked_at.setdefault(key, e.ts.timestamp())
        elif e.type == EventType.message and asked:
            for key in asked:
                if "skip" in e.payload.get("text", "").lower():
                    skipped[key] = e.ts.timestamp()
                else:
                    retried[key] += 1
            figures["answered_skip" if "skip" in e.payload.get("text", "").lower() else "answered_retry"] += 1
            asked = []
    return retried, skipped, asked_at


def _check_task(tid: str, log_: list[Event], runs: dict[str, list[dict[str, Any]]], pages: dict[str, list[float]],
                violations: list[str], figures: Counter) -> None:
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
    for e in log_:
        key = e.payload.get("idempotency_key")
        if e.type == EventType.tool_result and key and "output" in e.payload and key not in recorded:
            recorded[key] = e.ts.timestamp()
    retried, skipped, asked_at = _answers(log_, figures)
    for key, ts in recorded.items():
        again = [x for x in runs.get(key, []) if x["what"] == "start" and x["ts"] > ts]
        if again:
            violations.append(f"{tid}: {key} ran again after its outcome was recorded")
    for key, lines in runs.items():
        if not (key.startswith(tid) and _is_send(key)):
            continue
        starts = [x["ts"] for x in lines if x["what"] == "start"]
        if len(starts) > 1 + retried[key]:
            violations.append(f"{tid}: side-effecting {key} ran {len(starts)} times with {retried[key]} user retries")
        if key in skipped and any(ts > skipped[key] for ts in starts):
            violations.append(f"{tid}: side-effecting {key} ran after the user said skip")
        figures["side_effect_reruns_on_retry"] += max(0, len(starts) - 1)
        if key in asked_at and any(x["what"] == "done" and x["ts"] < asked_at[key] for x in lines):
            figures["doubts_about_finished_runs"] += 1
    _check_page(tid, task, log_, pages, violations)
    _check_outputs(tid, task, log_, violations)


def _check_page(tid: str, task: Any, log_: list[Event], pages: dict[str, list[float]], violations: list[str]) -> None:
    """A browse step's page is not fetched again once its result is in the log."""
    look = next((n for n in task.plan.nodes if n.id == "look"), None)
    if look is None:
        return
    tag = look.args["url"].rsplit("/", 1)[1]
    recorded = next((e.ts.timestamp() for e in log_ if e.type == EventType.tool_result
                     and e.payload.get("node_id") == "look" and "output" in e.payload), None)
    if recorded is not None and any(ts > recorded for ts in pages.get(tag, [])):
        violations.append(f"{tid}: page {tag} was browsed again after its result was recorded")


def _check_outputs(tid: str, task: Any, log_: list[Event], violations: list[str]) -> None:
    """Every node's final output follows from its upstream nodes' final outputs (and, for a
    skipped call, from the user's skip)."""
    assert task.plan is not None
    out = {n.id: task.nodes[n.id].output for n in task.plan.nodes}
    for node in task.plan.nodes:
        got = out[node.id]
        if node.kind == "agent":
            tag = AGENT_MARK.search(node.instructions or "").group(1)  # type: ignore[union-attr]
            skip = next((e.payload["content"] for e in log_ if e.type == EventType.tool_result
                         and e.payload.get("call_id") == f"{tag}-send" and e.payload.get("skipped")), None)
            want: Any = expected_agent_answer(tag, skip)
            got = (got or {}).get("answer")
        elif node.tool == "chaos_send":
            skipped = any(e.type == EventType.node_done and e.payload.get("node_id") == node.id
                          and e.payload.get("skipped") for e in log_)
            want = None if skipped else f"sent to {node.args['to']}: {out['join']}"
        elif node.tool == "chaos_flaky":
            want = combine(node.args["value"], [])
        elif node.tool == "browse":
            want = page_title(node.args["url"].rsplit("/", 1)[1])
            got = (got or {}).get("title")
        else:
            inputs = [_resolve(ref, out) for ref in node.args.get("inputs", [])]
            want = combine(node.args["value"], inputs)
        if got != want:
            violations.append(f"{tid}: node {node.id} output {got!r} != {want!r} from its upstream outputs")


def _resolve(ref: str, out: dict[str, Any]) -> Any:
    m = re.fullmatch(r"\{\{(\w+)\.output(?:\.(\w+))?\}\}", ref)
    assert m, ref
    value = out[m.group(1)]
    return value[m.group(2)] if m.group(2) and value is not None else value
