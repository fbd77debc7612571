"""Signed webhooks, as Stripe and GitHub do them: HMAC-SHA256 over `timestamp.body`, sent as
`Troupe-Signature: t=<unix seconds>,v1=<hex>`. A receiver recomputes it with the shared
secret and refuses a timestamp too far from its clock (replays)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

__all__ = ["HEADER", "SignatureError", "new_secret", "sign", "verify"]

HEADER = "Troupe-Signature"


class SignatureError(ValueError):
    """The signature is missing, malformed, stale or wrong."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={_mac(secret, ts, body)}"


def verify(secret: str, body: bytes, header: str | None, *, tolerance_s: float = 300,
           now: float | None = None) -> int:
    """Check `header` against `body`; its timestamp, or SignatureError saying what is wrong."""
    if not header:
        raise SignatureError(f"no {HEADER} header; sign the body as t=<unix time>,v1=<HMAC-SHA256 of 't.body'>")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        raise SignatureError(f"{HEADER} needs t=<unix time>") from None
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        raise SignatureError(f"the signature's timestamp is more than {tolerance_s:g} s from now; sign again")
    given = [v for k, v in (p.split("=", 1) for p in header.split(",") if "=" in p) if k == "v1"]
    if not any(hmac.compare_digest(_mac(secret, ts, body), g) for g in given):
        raise SignatureError("the signature does not match the body")
    return ts
