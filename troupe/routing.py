"""Routing a correction to the node that owns the failing file, without asking a model.

A failed verdict with `locations` (file, line, error: a test run, a review) is sent back to
the plan node whose `owns` patterns match the file, as that node redefined with the exact
failures appended to its instructions; the reducer then re-runs its dependents (the test run,
the review, the bundle). A failed assertion inside a test file is the code's fault, not the
test's (the tests encode the contract), so it goes to the owner of the code the traceback
passed through, else to the owners of the project's non-test files. Anything that cannot be
routed (no location, a file nobody owns) is left to the planner.
"""

from __future__ import annotations

import posixpath
from fnmatch import fnmatch
from typing import Any

from troupe.models import AcceptanceTest, Plan, PlanNode, Verdict

__all__ = ["CORRECTION_MARK", "Routed", "corrected_nodes", "owned", "route_correction"]

CORRECTION_MARK = "\n\n## Correction round "
Routed = dict[str, list[dict[str, Any]]]
"""Node id -> the failures it must fix."""


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py" or "/tests/" in f"/{path}"


def owned(patterns: list[str], path: str) -> bool:
    """Whether a workspace path (as a tool call gives it: './a/../b' is 'b') matches a pattern."""
    path = posixpath.normpath(path.strip())
    return any(fnmatch(path, pattern) for pattern in patterns)


def _owners(plan: Plan, path: str) -> list[str]:
    return [n.id for n in plan.nodes if owned(n.owns, path)]


def _code_owners(plan: Plan) -> list[str]:
    """Nodes that own Python code other than tests."""
    return [n.id for n in plan.nodes if any(not _is_test(p) and p.endswith(("*", ".py")) for p in n.owns)]


def _blame(plan: Plan, loc: dict[str, Any]) -> list[str]:
    file = str(loc.get("file") or "")
    error = str(loc.get("error") or "")
    if _is_test(file) and (error.startswith("AssertionError") or error.startswith("assert")):
        for frame in reversed(loc.get("frames") or []):
            if not _is_test(frame["file"]) and (owners := _owners(plan, frame["file"])):
                return owners
        return _code_owners(plan)
    return _owners(plan, file)


def _downstream(plan: Plan, roots: set[str]) -> set[str]:
    """`roots` and every node that depends on one of them, directly or not."""
    below = set(roots)
    grew = True
    while grew:
        grew = False
        for n in plan.nodes:
            if n.id not in below and below & set(n.deps):
                below.add(n.id)
                grew = True
    return below


def route_correction(plan: Plan, failed: list[Verdict], tests: list[AcceptanceTest]) -> Routed | None:
    """Each failure's owner, or None when some failed verdict can be neither routed nor is
    re-checked anyway: one whose test reads a node downstream of a routed owner (the bundle's
    test run, when the code is fixed) runs again after the fix, so it needs no owner of its own."""
    routed: Routed = {}
    unrouted = []
    for verdict in failed:
        places = [(loc, _blame(plan, loc)) for loc in verdict.locations]
        if not places or not all(owners for _, owners in places):
            unrouted.append(verdict)
            continue
        for loc, owners in places:
            for node_id in owners:
                routed.setdefault(node_id, []).append({**loc, "test_id": verdict.test_id})
    if not routed:
        return None
    reads = {t.id: t.params.get("node") for t in tests}
    rerun = _downstream(plan, set(routed))
    if any(reads.get(v.test_id) not in rerun for v in unrouted):
        return None
    return routed


def corrected_nodes(plan: Plan, routed: Routed, round_: int) -> list[PlanNode]:
    """The owners redefined: their instructions, then the failures to fix this round (an
    earlier round's list is replaced, not piled up)."""
    nodes = []
    for node_id, failures in routed.items():
        node = plan.node(node_id)
        base = (node.instructions or "").split(CORRECTION_MARK, 1)[0]
        lines = "\n".join(f"- {f['file']}:{f['line']}: {f['error']}" + (f" (test {f['test']})" if f.get("test")
                                                                           else "") for f in failures)
        note = (f"{CORRECTION_MARK}{round_}\nThe checks failed at these places in files you own. Read each "
                f"file, fix the cause, and write it back; change nothing else.\n{lines}")
        nodes.append(node.model_copy(update={"instructions": base + note}))
    return nodes
