"""The verifier: deterministic checks, `citations_supported` (embeddings) and `llm_judge`
(a rubric judged by the `reason` model group). No Ray here; the Verifier deployment wraps it
and holds the embedding model and the router handle.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from troupe.checks import MODEL_CHECKS, run_checks, subject_of
from troupe.llm import ChatRequest, LLMClient, LLMUsage
from troupe.models import AcceptanceTest, Task, Verdict
from troupe.planner import parse_json, pinned_block

__all__ = ["Judgement", "Verification", "Verifier"]

SUBJECT_CHARS = 16_000


class Verification(BaseModel):
    verdicts: list[Verdict]
    calls: list[LLMUsage] = Field(default_factory=list)


class Judgement(BaseModel):
    passed: bool
    reason: str


class Verifier:
    def __init__(self, llm: LLMClient | None = None, encoder: Any = None):
        self.llm = llm
        self.encoder = encoder

    async def verify(self, task: Task, workspace: str | Path) -> Verification:
        workspace = Path(workspace)
        tests = task.acceptance_tests
        checked = [t for t in tests if t.check_type not in MODEL_CHECKS]
        verdicts = {v.test_id: v for v in await asyncio.to_thread(
            run_checks, checked, task, workspace, encoder=self.encoder)}
        calls: list[LLMUsage] = []
        for test in tests:
            if test.check_type == "llm_judge":
                verdicts[test.id] = await self._judge(test, task, workspace, calls)
        return Verification(verdicts=[verdicts[t.id] for t in tests], calls=calls)

    async def _judge(self, test: AcceptanceTest, task: Task, workspace: Path, calls: list[LLMUsage]) -> Verdict:
        rubric = str(test.params.get("rubric") or test.description or "").strip()
        if not rubric:
            return Verdict(test_id=test.id, passed=False, reason="llm_judge needs params.rubric (or a description)")
        if self.llm is None or not await self.llm.configured():
            return Verdict(test_id=test.id, passed=False,
                           reason="llm_judge needs a model and none is configured (set TROUPE_MODEL_REASON)")
        try:
            subject = subject_of(test, task, workspace)
        except LookupError as exc:
            return Verdict(test_id=test.id, passed=False, reason=str(exc))
        text = subject if isinstance(subject, str) else json.dumps(subject, ensure_ascii=False, default=str)
        if len(text) > SUBJECT_CHARS:
            text = text[:SUBJECT_CHARS] + "\n... (cut)"
        messages = [
            {"role": "system", "content": "\n\n".join(filter(None, [
                "You are Troupe's verifier. Judge strictly whether the work below meets the rubric. Answer with "
                'one JSON object: {"passed": true|false, "reason": "one or two sentences naming what is missing '
                'or why it passes"}.', pinned_block(task.pinned_requirements)]))},
            {"role": "user", "content": f"Goal: {task.goal}\n\nRubric: {rubric}\n\nWork to judge:\n{text}"},
        ]
        problem = ""
        for _ in range(2):  # one repair for an unusable answer
            reply = await self.llm.chat(ChatRequest(
                group="reason", messages=messages, task_id=task.id, temperature=0,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "Judgement", "schema": Judgement.model_json_schema()}}))
            calls.append(reply.usage)
            try:
                judgement = Judgement.model_validate(parse_json(reply.content, reply.finish_reason))
                return Verdict(test_id=test.id, passed=judgement.passed, reason=f"judge: {judgement.reason}")
            except (ValueError, ValidationError) as exc:
                problem = str(exc).splitlines()[0]
                messages = [*messages, reply.assistant_message(),
                            {"role": "user", "content": f"Unusable answer ({problem}). Reply with the JSON only."}]
        return Verdict(test_id=test.id, passed=False, reason=f"the judge's answer was unusable: {problem}")
