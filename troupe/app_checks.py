"""Acceptance checks for built software, read from the outputs of the nodes that tested and
reviewed it, and the human approval that gates its publication:

    {"id": "tests_pass", "check_type": "tests_passed", "params": {"node": "test_run", "min_tests": 2}}
    {"id": "reviewed", "check_type": "review_scores", "params": {"node": "review", "min_security": 7,
                                                                  "min_quality": 6}}
    {"id": "approved", "check_type": "human_approval"}

`tests_passed` reads a `run_pytest`/`run_bundle_tests` output; `review_scores` a `review_code`
output. Their failures carry `locations` (file, line, error), so the correction goes to the
node that owns the file (troupe/routing.py). `human_approval` passes once the user approved
the current correction round; until then its verdict is `awaiting` approval, which pauses the
task (waiting_on "approval") instead of correcting it; a reply other than an approval fails it
with the reply as the feedback the correction works from.
"""

from __future__ import annotations

import re
from typing import Any

from troupe.models import AcceptanceTest, NodeStatus, Task

__all__ = ["APP_CHECKS", "CheckResult", "approved", "run_app_check"]

APP_CHECKS = frozenset({"tests_passed", "review_scores", "human_approval"})
APPROVE = re.compile(r"^\s*(approve[ds]?|yes|lgtm|ship it)\b", re.I)
MAX_LOCATIONS = 20

CheckResult = tuple[bool, str, list[dict[str, Any]], str | None]
"""(passed, reason, locations, awaiting)."""


class AppCheckError(LookupError):
    pass


def approved(reply: str) -> bool:
    """Whether a reply to an approval request approves: it starts with approve, yes, lgtm or ship it."""
    return APPROVE.match(reply) is not None


def _output(test: AcceptanceTest, task: Task) -> dict[str, Any]:
    node_id = test.params.get("node")
    if not node_id:
        raise AppCheckError(f"{test.check_type} needs params.node: the node whose output it reads")
    node = task.nodes.get(str(node_id))
    if node is None:
        raise AppCheckError(f"the plan has no node {node_id!r}")
    if node.status != NodeStatus.done:
        raise AppCheckError(f"node {node_id!r} did not finish ({node.status})")
    if not isinstance(node.output, dict):
        raise AppCheckError(f"node {node_id!r} output is not a test or review result")
    return node.output


def _tests_passed(test: AcceptanceTest, task: Task) -> CheckResult:
    out = _output(test, task)
    if "counts" not in out or "failures" not in out:
        raise AppCheckError(f"node {test.params['node']!r} output is not a run_pytest result (no counts, failures)")
    counts, need = out["counts"], int(test.params.get("min_tests", 1))
    failures = out["failures"][:MAX_LOCATIONS]
    locations = [{"file": f.get("file"), "line": f.get("line"), "error": f.get("error"), "test": f.get("test")}
                 for f in failures]
    if failures or not out.get("passed"):
        where = "; ".join(f"{f['file']}:{f['line']}: {f['error']} (in {f['test']})" for f in locations)
        return False, f"tests failed ({out.get('summary')}): {where or 'pytest exited ' + str(out.get('exit_code'))}", \
            locations, None
    if counts.get("passed", 0) < need:
        return False, f"only {counts.get('passed', 0)} tests passed, need at least {need}", [], None
    return True, f"tests passed ({out.get('summary')})", [], None


def _review_scores(test: AcceptanceTest, task: Task) -> CheckResult:
    out = _output(test, task)
    low, locations = [], []
    for aspect in ("security", "quality"):
        if aspect not in out:
            raise AppCheckError(f"node {test.params['node']!r} output is not a review_code result (no {aspect})")
        need = float(test.params.get(f"min_{aspect}", 7))
        score = out[aspect]["score"]
        if score < need:
            low.append(f"{aspect} {score}/10 < {need:g}")
            locations += [{"file": f["file"], "line": f["line"], "error": f"{f['rule']} ({f['severity']}): "
                                                                             f"{f['message']}"}
                          for f in out[aspect]["findings"] if f["severity"] != "low"]
    scores = f"security {out['security']['score']}/10, quality {out['quality']['score']}/10"
    if low:
        shown = "; ".join(f"{x['file']}:{x['line']}: {x['error']}" for x in locations[:MAX_LOCATIONS])
        return False, f"review below the bar: {', '.join(low)}" + (f": {shown}" if shown else ""), \
            locations[:MAX_LOCATIONS], None
    return True, scores, [], None


def _human_approval(test: AcceptanceTest, task: Task) -> CheckResult:
    decision = task.approval
    if decision is None or decision.round != task.corrections:
        return False, "waiting for the user's approval", [], "approval"
    if approved(decision.reply):
        return True, f"approved by the user: {decision.reply.strip()[:500]}", [], None
    return False, f"rejected by the user: {decision.reply.strip()[:2000]}", [], None


def run_app_check(test: AcceptanceTest, task: Task) -> CheckResult:
    """The check's result; raises AppCheckError (a LookupError) when there is nothing to check."""
    return {"tests_passed": _tests_passed, "review_scores": _review_scores,
            "human_approval": _human_approval}[test.check_type](test, task)
