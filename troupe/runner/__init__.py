"""The task runner, split by concept: `base` (state owner, log, budgets), `dag` (executing
nodes through the call ledger), `agents` (agent nodes), `review` (verify, correct,
publish, learn) and `driver` (the drive itself: plan, resume, phases, cancellation)."""

from troupe.runner.base import CallTool, PlannerPort, VerifierPort
from troupe.runner.driver import TaskRunner
from troupe.verifier import Verification

__all__ = ["CallTool", "PlannerPort", "TaskRunner", "Verification", "VerifierPort"]
