"""Deterministic acceptance checks.

A check reads its subject from `params`: `artifact` (a file in the task's workspace) or
`node` (a node's output, optionally narrowed by `field`, a dotted path). Examples:

    {"id": "has_report", "check_type": "exists", "params": {"artifact": "report.md"}}
    {"id": "answer", "check_type": "contains", "params": {"node": "square", "text": "333833500"}}
    {"id": "links", "check_type": "min_count", "threshold": 3, "params": {"node": "fetch", "field": "links"}}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from troupe.models import AcceptanceTest, NodeStatus, Task, Verdict
from troupe.plans import get_path

__all__ = ["run_checks"]


class _NoSubject(Exception):
    pass


def _subject(test: AcceptanceTest, task: Task, workspace: Path) -> Any:
    p = test.params
    if "artifact" in p:
        path = (workspace / str(p["artifact"])).resolve()
        if not path.is_relative_to(workspace.resolve()) or not path.is_file():
            raise _NoSubject(f"artifact {p['artifact']!r} was not produced")
        return path.read_text(errors="replace")
    if "node" in p:
        node = task.nodes.get(str(p["node"]))
        if node is None:
            raise _NoSubject(f"the plan has no node {p['node']!r}")
        if node.status != NodeStatus.done:
            raise _NoSubject(f"node {p['node']!r} did not finish ({node.status})")
        try:
            value = get_path(node.output, str(p.get("field", "")))
        except KeyError:
            raise _NoSubject(f"node {p['node']!r} output has no field {p.get('field')!r}") from None
        return value
    raise _NoSubject("params must name an 'artifact' or a 'node'")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _check(test: AcceptanceTest, task: Task, workspace: Path) -> tuple[bool, str]:
    if test.check_type == "all_nodes_done":
        unfinished = [n.id for n in task.nodes.values() if n.status != NodeStatus.done]
        return (not unfinished, "all nodes done" if not unfinished else f"unfinished nodes: {', '.join(unfinished)}")
    subject = _subject(test, task, workspace)
    p = test.params
    if test.check_type == "exists":
        ok = subject not in (None, "", [], {})
        return ok, "present and not empty" if ok else "present but empty"
    if test.check_type == "contains":
        needles = p.get("all_of") or [p.get("text", "")]
        text = _text(subject)
        if not p.get("case_sensitive", False):
            text, needles = text.lower(), [str(n).lower() for n in needles]
        missing = [n for n in needles if str(n) not in text]
        return (not missing, "contains every expected text" if not missing else f"missing: {missing}")
    if test.check_type == "regex":
        pattern = str(p.get("pattern", ""))
        found = re.search(pattern, _text(subject), re.MULTILINE) is not None
        return found, f"/{pattern}/ {'matches' if found else 'does not match'}"
    if test.check_type == "json_schema":
        value = json.loads(subject) if isinstance(subject, str) and "artifact" in p else subject
        try:
            jsonschema.validate(value, p.get("schema", {}))
            return True, "valid against the schema"
        except jsonschema.ValidationError as exc:
            return False, f"schema violation at {'/'.join(map(str, exc.absolute_path)) or '(root)'}: {exc.message}"
    if test.check_type == "min_count":
        if "pattern" in p:
            count = len(re.findall(str(p["pattern"]), _text(subject), re.MULTILINE))
        elif isinstance(subject, (list, dict)):
            count = len(subject)
        else:
            count = len([line for line in _text(subject).splitlines() if line.strip()])
        need = test.threshold if test.threshold is not None else 1
        return count >= need, f"count {count}, need at least {need:g}"
    return False, f"unknown check_type {test.check_type!r}"


def run_checks(tests: list[AcceptanceTest], task: Task, workspace: Path) -> list[Verdict]:
    verdicts = []
    for test in tests:
        try:
            passed, reason = _check(test, task, workspace)
        except _NoSubject as exc:
            passed, reason = False, str(exc)
        except (ValueError, re.error, jsonschema.SchemaError) as exc:
            passed, reason = False, f"check could not run: {exc}"
        verdicts.append(Verdict(test_id=test.id, passed=passed, reason=reason))
    return verdicts
