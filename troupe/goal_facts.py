"""What a goal says, for offline slot filling: URLs (and bare domains), file paths, quoted
terms, code (fenced, in backticks, or after "python:"), a named collection, the question, the
topic or focus, each by a `fill:` rule a template slot names (see `fill`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MAX_URLS", "RULE_NEEDS", "GoalFacts", "fill", "mask"]

MAX_URLS = 10
"""Pages summarize_urls reads at most: 10 pages of 30,000 characters stay under the ToolPool's
1 MB limit on a tool's output."""
_URL = re.compile(r"https?://[^\s<>\"'`)\]]+", re.IGNORECASE)
_TLDS = ("com|org|net|io|dev|ai|app|edu|gov|info|biz|co|uk|de|fr|nl|eu|us|ca|au|ch|se|no|es|it|jp|in|br|"
         "tech|cloud|site|page|xyz|me|tv|ly|sh|so|gg")
_DOMAIN = re.compile(rf"(?<![\w@/.-])((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:{_TLDS}))(/[^\s<>\"'`)\]]*)?(?![\w-])",
                     re.IGNORECASE)
_FENCED = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|“([^”\n]{1,200})”|(?<![\w])'([^'\n]{1,200})'(?![\w])")
_PATH = re.compile(r"(?<![\w/.:-])((?:\.{1,2}/|/)?(?:[\w.-]+/)*[\w-][\w.-]*\.(?:txt|md|csv|tsv|json|jsonl|pdf|"
                   r"docx?|xlsx?|pptx?|html?|eml|py|ya?ml|xml|log|ipynb|parquet))(?![\w/])", re.IGNORECASE)
_CODE_AFTER = re.compile(r"(?:python|code|script|run|execute|evaluate)\s*:\s*(.+)$", re.IGNORECASE | re.DOTALL)
_COLLECTION = re.compile(r"(?:\b(?:the|our|my)\s+)?\b([\w-]+)\s+collection\b|\bcollection\s+(?:named\s+|called\s+)?"
                         r"[\"'`]?([\w-]+)", re.IGNORECASE)
_WORD = re.compile(r"[\w'’;-]+")
_FILLER = frozenset(
    "a an the this these those that please me us my our your give tell show write make produce get find fetch "
    "read open visit browse research summarize summarise summary summaries tl;dr tldr key main points gist what "
    "do does did say says said about on of in at from for and or with to is are was were sites site website "
    "websites page pages article articles post posts url urls link links source sources citation citations "
    "report briefly short quick quickly can could would will you i it its them they look into how find "
    "information across compare described describe describes idea ideas takeaway takeaways overview content "
    "contents explain".split())
_FILES = (r"(?:the|my|our|these)\s+(?:attached\s+|uploaded\s+)?(?:files?|documents?|attachments?|notes|pdfs?)"
          r"(?:\s+I\s+(?:attached|uploaded))?")
_QUESTION_HEAD = re.compile(rf"^(?:based on|according to|using|from|in)\s+{_FILES}\s*,\s*", re.IGNORECASE)
_QUESTION_TAIL = re.compile(rf"\s*,?\s+(?:based on|according to|using|from|in)\s+{_FILES}\s*(?=[?.!]?\s*$)",
                            re.IGNORECASE)
_FOCUS = re.compile(r"\b(?:about|regarding|concerning|on the subject of|focus(?:ing|ed)? on|with a focus on)\s+"
                    r"(.+?)\s*(?:[?.!;]|,\s|$)", re.IGNORECASE)


def _python(code: str) -> str | None:
    """`code` if it parses as Python that does something (not a bare word or sentence)."""
    code = code.strip()
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    if not tree.body:
        return None
    if all(isinstance(s, ast.Expr) and isinstance(s.value, (ast.Name, ast.Constant)) for s in tree.body):
        return None  # "print" or "hello" alone is a word, not a program
    return code


def _echo_last_expression(code: str) -> str:
    """Like the REPL: a final bare expression (not a call that prints) has its value printed."""
    tree = ast.parse(code)
    last = tree.body[-1]
    if not isinstance(last, ast.Expr) or (isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name)
                                          and last.value.func.id == "print"):
        return code
    raw = code.encode()  # ast offsets count UTF-8 bytes
    starts = [0]
    for line in raw.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    begin = starts[last.lineno - 1] + last.col_offset
    end = starts[(last.end_lineno or last.lineno) - 1] + (last.end_col_offset or 0)
    echo = b"_ = (" + raw[begin:end] + b")\nif _ is not None:\n    print(repr(_))"
    return (raw[:begin] + echo + raw[end:]).decode()


@dataclass
class GoalFacts:
    """What slot filling can take from a goal (and its requirements)."""

    goal: str
    urls: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    quoted: list[str] = field(default_factory=list)
    code: str | None = None
    collection: str | None = None
    rest: str = ""
    """The goal with URLs, code, paths and quotes taken out: what it asks, in words."""

    @classmethod
    def parse(cls, goal: str, requirements: Sequence[str] = ()) -> GoalFacts:
        text = "\n".join([goal, *requirements])
        facts = cls(goal=goal.strip())
        blocks = [(lang.lower(), body) for lang, body in _FENCED.findall(text)]
        rest = _FENCED.sub(" ", text)
        code = "\n\n".join(b.strip("\n") for lang, b in blocks
                           if lang in ("", "python", "py", "python3") and _python(b))
        if not code:  # `inline code`: all spans together if they make one program, else the first that is one
            inline = _INLINE.findall(rest)
            code = _python("\n".join(inline)) or next((c for c in inline if _python(c)), "") if inline else ""
        if not code:  # "Run: import math; print(math.pi)"
            after = _CODE_AFTER.search(rest)
            if after and _python(after.group(1)):
                code, rest = after.group(1), rest[:after.start(1)]
        if code:
            facts.code = code.strip()
            rest = _INLINE.sub(" ", rest)
        for m in _URL.finditer(rest):
            facts.urls.append(m.group(0).rstrip(".,;:!?"))
        rest = _URL.sub(" ", rest)
        for m in _PATH.finditer(rest):
            facts.paths.append(m.group(1))
        rest = _PATH.sub(" ", rest)
        for m in _DOMAIN.finditer(rest):
            facts.urls.append(f"https://{m.group(1)}{(m.group(2) or '/').rstrip('.,;:!?')}")
        rest = _DOMAIN.sub(" ", rest)
        facts.urls = list(dict.fromkeys(facts.urls))
        facts.quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(rest)]
        m = _COLLECTION.search(rest)
        if m:
            facts.collection = (m.group(1) or m.group(2)).lower()
        facts.rest = " ".join(_INLINE.sub(lambda m: m.group(1), rest).split())
        return facts

    def entities(self) -> frozenset[str]:
        """The concrete things the goal names; a plan reused as is must be about the same ones."""
        return frozenset([*(u.rstrip("/") for u in self.urls), *self.paths, *self.quoted,
                          *([" ".join(self.code.split())] if self.code else [])])

    @property
    def focus(self) -> str:
        """What the goal singles out: its quoted terms, or what follows "about" ("focusing on"...);
        empty when it asks for no focus ("Summarize https://...")."""
        if self.quoted:
            return ", ".join(self.quoted)
        m = _FOCUS.search(self.rest.split("\n", 1)[0])
        return _trim(_WORD.findall(m.group(1))) if m else ""

    @property
    def topic(self) -> str:
        """What the goal is about, in a few words: its focus, else its words minus the asking."""
        return self.focus or _trim(_WORD.findall(self.rest.split("\n", 1)[0]))

    @property
    def question(self) -> str:
        """The goal as a question or request, without the words pointing at its files."""
        goal = " ".join(_FENCED.sub(" ", self.goal).split())
        cleaned = _QUESTION_TAIL.sub("", _QUESTION_HEAD.sub("", goal)).strip(" ,;:")
        return (cleaned[:1].upper() + cleaned[1:]) if cleaned else " ".join(goal.split())


def _trim(words: list[str]) -> str:
    """Words with the asking ("please summarize these pages about") cut from both ends."""
    while words and words[0].lower() in _FILLER:
        words.pop(0)
    while words and words[-1].lower() in _FILLER:
        words.pop()
    return " ".join(words).strip(" ,;:-")


def fill(rule: str, facts: GoalFacts) -> Any:
    """A slot's value by its `fill` rule, or None when the goal does not give one."""
    if rule == "urls":
        return facts.urls[:MAX_URLS] or None
    if rule == "url":
        return facts.urls[0] if facts.urls else None
    if rule == "paths":
        return facts.paths or None
    if rule == "path":
        return facts.paths[0] if facts.paths else None
    if rule == "quoted":
        return facts.quoted or None
    if rule == "code":
        return _echo_last_expression(facts.code) if facts.code else None
    if rule == "topic":
        return facts.topic or None
    if rule == "focus":
        return facts.focus or None
    if rule == "question":
        return facts.question or None
    if rule == "collection":
        return facts.collection
    if rule == "goal":
        return facts.goal
    raise ValueError(f"unknown slot fill rule {rule!r}; use one of urls, url, paths, path, quoted, code, topic, "
                     "focus, question, collection, goal")


RULE_NEEDS = {"focus": "a focus", "urls": "a URL", "url": "a URL", "paths": "a file path", "path": "a file path",
               "quoted": "a \"quoted\" term", "code": "the Python code to run (in a ```python block or `backticks`)",
               "topic": "a topic", "question": "a question",
               "collection": "a collection name ('the reports collection')"}


def mask(text: str) -> str:
    """Text as it is matched: concrete values replaced by what they are, so that two goals about
    different URLs (or code) read alike and a template's examples match goals they do not quote."""
    text = _FENCED.sub(" some code ", text)
    # A bare site ("https://example.com") reads as a website, a deeper URL as a page.
    text = _URL.sub(lambda m: " a website " if urlsplit(m.group(0)).path in ("", "/") else " a web page ", text)
    text = _PATH.sub(" a file ", text)
    text = _DOMAIN.sub(" a website ", text)
    text = _INLINE.sub(" some code ", text)
    return " ".join(text.split())
