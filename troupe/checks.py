"""Acceptance checks that need no language model.

A check reads its subject from `params`: `artifact` (a file in the task's workspace) or
`node` (a node's output, optionally narrowed by `field`, a dotted path). Examples:

    {"id": "has_report", "check_type": "exists", "params": {"artifact": "report.md"}}
    {"id": "answer", "check_type": "contains", "params": {"node": "square", "text": "333833500"}}
    {"id": "links", "check_type": "min_count", "threshold": 3, "params": {"node": "fetch", "field": "links"}}

`citations_supported` (troupe/citations.py) checks the subject, a Markdown report with `[n]`
markers, against the source texts in `sources_node`'s output (a node id or a list of them),
narrowed by `sources_field`; `threshold` is the least cosine similarity (default 0.6):

    {"id": "citations", "check_type": "citations_supported", "threshold": 0.6,
     "params": {"artifact": "summary.md", "sources_node": "fetch", "sources_field": "pages"}}

It embeds with `encoder` (see troupe/embeddings.py; default: the process-wide model, loaded
once). `row_count`, `schema` and `chart_exists` read data files and charts (troupe/data_checks.py);
`tests_passed`, `review_scores` and `human_approval` read test runs, reviews and the user's
approval (troupe/app_checks.py). `llm_judge` needs a model: the Verifier judges it; here it fails, saying so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from troupe.citations import DEFAULT_THRESHOLD, check_support
from troupe.app_checks import APP_CHECKS, run_app_check
from troupe.data_checks import DATA_CHECKS, run_data_check
from troupe.embeddings import as_embedder
from troupe.models import AcceptanceTest, NodeStatus, Task, Verdict
from troupe.plans import get_path

__all__ = ["MODEL_CHECKS", "run_checks"]

MODEL_CHECKS = frozenset({"llm_judge"})
"""Check types judged by a model (the Verifier's), not by run_checks."""


class _NoSubject(LookupError):
    pass


def _node_output(task: Task, node_id: str, field: str) -> Any:
    node = task.nodes.get(node_id)
    if node is None:
        raise _NoSubject(f"the plan has no node {node_id!r}")
    if node.status != NodeStatus.done:
        raise _NoSubject(f"node {node_id!r} did not finish ({node.status})")
    try:
        return get_path(node.output, field)
    except KeyError:
        raise _NoSubject(f"node {node_id!r} output has no field {field!r}") from None


def _subject(test: AcceptanceTest, task: Task, workspace: Path) -> Any:
    p = test.params
    if "artifact" in p:
        path = (workspace / str(p["artifact"])).resolve()
        if not path.is_relative_to(workspace.resolve()) or not path.is_file():
            raise _NoSubject(f"artifact {p['artifact']!r} was not produced")
        return path.read_text(errors="replace")
    if "node" in p:
        return _node_output(task, str(p["node"]), str(p.get("field", "")))
    raise _NoSubject("params must name an 'artifact' or a 'node'")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _source_records(test: AcceptanceTest, task: Task) -> list[dict[str, Any]]:
    """The records `citations_supported` checks against: every item of each sources node's output."""
    nodes = test.params.get("sources_node")
    if not nodes:
        raise _NoSubject("citations_supported needs params.sources_node: the node whose output holds the "
                         "cited sources' text (e.g. the fetch or search node)")
    records: list[dict[str, Any]] = []
    for node_id in [nodes] if isinstance(nodes, str) else list(nodes):
        value = _node_output(task, str(node_id), str(test.params.get("sources_field", "")))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                records.append(item)
            elif isinstance(item, str):
                records.append({"text": item, "n": len(records) + 1})
    return records


def _citations(test: AcceptanceTest, task: Task, workspace: Path, encoder: Any) -> tuple[bool, str, list]:
    report = _text(_subject(test, task, workspace))
    records = _source_records(test, task)
    found: list[dict[str, Any]] = []
    passed, reason = check_support(
        report, records, as_embedder(encoder),
        threshold=test.threshold if test.threshold is not None else DEFAULT_THRESHOLD,
        check_numbers=bool(test.params.get("check_numbers", True)),
        min_citations=int(test.params.get("min_citations", 1)), found=found,
    )
    return passed, reason, found


def _check(test: AcceptanceTest, task: Task, workspace: Path, encoder: Any = None) -> tuple[Any, ...]:
    """(passed, reason), and for citations_supported the citations it checked."""
    if test.check_type in MODEL_CHECKS:
        return False, (f"{test.check_type} needs the verifier's model; none judged it (configure one, e.g. "
                       "TROUPE_MODEL_REASON=openai/gpt-4o-mini with OPENAI_API_KEY)")
    if test.check_type == "citations_supported":
        return _citations(test, task, workspace, encoder)
    if test.check_type in APP_CHECKS:
        try:
            return run_app_check(test, task)
        except LookupError as exc:
            raise _NoSubject(str(exc)) from None
    if test.check_type in DATA_CHECKS:
        try:
            return run_data_check(test, workspace)
        except LookupError as exc:
            raise _NoSubject(str(exc)) from None
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


def run_checks(tests: list[AcceptanceTest], task: Task, workspace: Path, *, encoder: Any = None) -> list[Verdict]:
    """One verdict per test. `encoder` embeds for `citations_supported` (an Embedder, a
    SentenceTransformer or a QueryEncoder); None loads the process-wide model on first need."""
    verdicts = []
    for test in tests:
        citations: list[dict[str, Any]] = []
        locations: list[dict[str, Any]] = []
        awaiting = None
        try:
            passed, reason, *extra = _check(test, task, workspace, encoder)
            if test.check_type in APP_CHECKS:
                locations, awaiting = extra
            else:
                citations = extra[0] if extra else []
        except _NoSubject as exc:
            passed, reason = False, str(exc)
        except (ValueError, re.error, jsonschema.SchemaError) as exc:
            passed, reason = False, f"check could not run: {exc}"
        verdicts.append(Verdict(test_id=test.id, passed=passed, reason=reason, citations=citations,
                                locations=locations, awaiting=awaiting))
    return verdicts


def subject_of(test: AcceptanceTest, task: Task, workspace: Path) -> Any:
    """What a test reads (an artifact's text or a node's output); LookupError says why none."""
    return _subject(test, task, workspace)
