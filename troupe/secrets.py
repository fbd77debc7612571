"""Keeping secrets out of what Troupe says: the passwords inside connection URLs."""

from __future__ import annotations

import hashlib
from urllib.parse import unquote, urlsplit

__all__ = ["fingerprint", "redact", "url_secrets"]


def fingerprint(url: str) -> str:
    """Tells two URLs apart without saying what they are (actors compare their stores so)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def url_secrets(*urls: str | None) -> list[str]:
    """The passwords (and tokens in the user part) of these URLs, as typed and decoded."""
    found: list[str] = []
    for url in urls:
        if not url:
            continue
        parts = urlsplit(url)
        for secret in (parts.password,):
            if secret:
                found += [secret, unquote(secret)]
    return [s for s in dict.fromkeys(found) if len(s) >= 4]


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
