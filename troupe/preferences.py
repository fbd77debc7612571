"""What a user says that should outlive the task: standing preferences ("always cite primary
sources") and facts about them ("our fiscal year starts in April"). Found by cue words in each
sentence, so it works offline and the same text always yields the same memories; the user
sees every one (GET /v1/memory) and can delete it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Noted", "extract_memories"]

MAX_CHARS = 300

_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n+")
# A standing instruction opens its sentence ("Always cite...", "From now on, ...") or is said
# of the user ("we always report in EUR", "I prefer tables"); "the test never passes" is not one.
_PREFERENCE = re.compile(
    r"^((please|and|also|so),? )*(always|never|from now on|going forward|in (the )?future|by default|"
    r"remember (that|to)|do not ever|don't ever)\b|\b(i|we) (always|never|(usually |always )?prefer)\b",
    re.IGNORECASE)
_FACT = re.compile(r"\b(our|my) [\w'-]+( [\w'-]+)? (is|are|starts|begins|ends|uses|runs)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Noted:
    kind: str  # preference | fact
    text: str


def extract_memories(text: str) -> list[Noted]:
    """The sentences of `text` worth remembering, each once, in order."""
    found: dict[str, Noted] = {}
    for sentence in _SENTENCES.split(text or ""):
        sentence = sentence.strip().strip("-*•; ").strip()
        if not 8 <= len(sentence) <= MAX_CHARS or len(sentence.split()) < 3:
            continue
        kind = "preference" if _PREFERENCE.search(sentence) else "fact" if _FACT.search(sentence) else None
        if kind is not None:
            found.setdefault(sentence.lower(), Noted(kind, sentence))
    return list(found.values())
