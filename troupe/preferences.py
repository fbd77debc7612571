"""What a user says that should outlive the task: standing preferences ("always cite primary
sources") and facts about them ("our fiscal year starts in April"). Found by cue words in each
sentence, so it works offline and the same text always yields the same memories; the user
sees every one (GET /v1/memory) and can delete it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Noted", "extract_memories", "names_a_secret"]

MAX_CHARS = 300

_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n+")
# A standing instruction opens its sentence ("Always cite...", "From now on, ...") or is said
# of the user ("we always report in EUR", "I prefer tables"); "the test never passes" is not one.
_PREFERENCE = re.compile(
    r"^((please|and|also|so),? )*(always|never|from now on|going forward|in (the )?future|by default|"
    r"remember (that|to)|do not ever|don't ever)\b|\b(i|we) (always|never|(usually |always )?prefer)\b",
    re.IGNORECASE)
# Never kept: a sentence that names a credential, or carries a token-like string (a key, a
# hash). A memory reaches every later plan of the tenant, its pins and events.
_SECRET = re.compile(r"\b(password|passcode|passphrase|secret|token|api[ _-]?key|credential|private key|ssh key|"
                     r"credit card|card number|iban|social security)s?\b|[A-Za-z0-9_+/=-]{24,}", re.IGNORECASE)
_FACT = re.compile(r"\b(our|my) [\w'-]+( [\w'-]+)? (is|are|starts|begins|ends|uses|runs)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Noted:
    kind: str  # preference | fact
    text: str


def names_a_secret(text: str) -> bool:
    return _SECRET.search(text) is not None


def extract_memories(text: str) -> list[Noted]:
    """The sentences of `text` worth remembering, each once, in order."""
    found: dict[str, Noted] = {}
    for sentence in _SENTENCES.split(text or ""):
        sentence = sentence.strip().strip("-*•; ").strip()
        if not 8 <= len(sentence) <= MAX_CHARS or len(sentence.split()) < 3 or names_a_secret(sentence):
            continue
        kind = "preference" if _PREFERENCE.search(sentence) else "fact" if _FACT.search(sentence) else None
        if kind is not None:
            found.setdefault(sentence.lower(), Noted(kind, sentence))
    return list(found.values())
