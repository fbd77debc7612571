"""Who may do what: API keys (stored as hashes), the audit log, and per-tenant model spend.

Keys are random, shown once, and kept only as a SHA-256 hash plus a short visible prefix:
they carry 256 bits of entropy, so a slow password hash would buy nothing. Same SQL store as
the event log (SQLite by default, PostgreSQL on a cluster); revision 0005 creates the tables.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from memory.schema import metadata
from memory.store import SideStore
from troupe.models import utcnow

__all__ = ["AccessStore", "ApiKey", "AuditEntry", "ConsoleSession", "KEY_PREFIX", "Role", "hash_key",
           "new_key_secret"]

KEY_PREFIX = "trp_"
_VISIBLE = 12  # characters of the key kept in clear: enough to tell keys apart in a list

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_by", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    # 1 for the admin key made on first start, else NULL: the unique index lets exactly one
    # Gateway replica win that race (NULLs never collide, on SQLite and PostgreSQL alike).
    Column("bootstrap", Integer, unique=True),
    Index("ix_api_keys_tenant", "tenant", "created_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("key_id", String(32)),
    Column("tenant", String(128)),
    Column("role", String(16)),
    Column("action", String(200), nullable=False),
    Column("target", Text),
    Column("outcome", Integer, nullable=False),
    Column("client", String(64)),
    Column("detail", Text),
    Index("ix_audit_ts", "ts"),
    Index("ix_audit_tenant", "tenant", "id"),
)

model_usage = Table(
    "model_usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("key_id", String(32)),
    Column("model", String(200), nullable=False),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Index("ix_model_usage_tenant", "tenant", "ts"),
)


# Console sign-ins (revision 0006): the browser holds a random session id, the table only its
# hash, so neither a cookie nor the table ever holds the API key; a session is as good as its
# key, re-checked on every request (revoked or expired key: the session ends with it).
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_console_sessions_key", "key_id"),
)


class Role(StrEnum):
    viewer = "viewer"
    member = "member"
    admin = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "member": 1, "admin": 2}[self.value]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    prefix: str
    tenant: str
    role: Role
    name: str
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def view(self) -> dict[str, Any]:
        """What the API shows of a key: never the secret, never its hash."""
        return {"key_id": self.key_id, "prefix": self.prefix, "tenant": self.tenant, "role": self.role.value,
                "name": self.name, "created_by": self.created_by, "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


@dataclass(frozen=True)
class AuditEntry:
    key_id: str | None
    tenant: str | None
    role: str | None
    action: str
    target: str | None
    outcome: int
    client: str | None
    detail: str | None = None


@dataclass(frozen=True)
class ConsoleSession:
    key: ApiKey
    csrf_token: str
    """Sent back by the console with every state-changing request (header or form field)."""
    expires_at: datetime


def _utc(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _key(r: Any) -> ApiKey:
    return ApiKey(key_id=r.key_id, prefix=r.prefix, tenant=r.tenant, role=Role(r.role), name=r.name,
                  created_by=r.created_by, created_at=_utc(r.created_at), expires_at=_utc(r.expires_at),
                  revoked_at=_utc(r.revoked_at))


def _encode_cursor(value: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_audit_cursor(cursor: str) -> int:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(value, int):
            raise TypeError(value)
        return value
    except Exception as exc:  # any garbage in a user-supplied cursor is the same fault
        raise ValueError("cursor is not one this server returned; drop it to start from the first page") from exc


class AccessStore(SideStore):
    """Async access to keys, audit and model usage; one per process."""

    def __init__(self, url: str):
        super().__init__(url)
        self._audit_queue: list[tuple[AuditEntry, datetime]] = []
        self._audit_flusher: asyncio.Task | None = None

    async def close(self) -> None:
        if self._audit_flusher is not None:
            await asyncio.shield(self._audit_flusher)
        await super().close()

    # -- keys ---------------------------------------------------------------------------

    async def create_key(self, *, tenant: str, role: Role, name: str = "", created_by: str | None = None,
                         expires_in: timedelta | None = None, secret: str | None = None,
                         bootstrap: bool = False) -> tuple[ApiKey, str] | None:
        """A new key and its secret (the only time the secret exists outside its holder).
        With `bootstrap`, None when another process already made the first admin key."""
        secret = secret or new_key_secret()
        now = utcnow()
        row = {"key_id": "key_" + secrets.token_hex(6), "key_hash": hash_key(secret), "prefix": secret[:_VISIBLE],
               "tenant": tenant, "role": role.value, "name": name, "created_by": created_by, "created_at": now,
               "expires_at": now + expires_in if expires_in else None, "revoked_at": None,
               "bootstrap": 1 if bootstrap else None}
        try:
            async with self._writer.begin() as conn:
                await conn.execute(api_keys.insert().values(**row))
        except IntegrityError:
            if bootstrap:
                return None
            raise
        key = ApiKey(key_id=row["key_id"], prefix=row["prefix"], tenant=tenant, role=role, name=name,
                     created_by=created_by, created_at=now, expires_at=row["expires_at"], revoked_at=None)
        return key, secret

    async def has_bootstrap_key(self) -> bool:
        async with self._reader.connect() as conn:
            q = select(api_keys.c.key_id).where(api_keys.c.bootstrap == 1)
            return (await conn.execute(q)).first() is not None

    async def find_by_secret(self, secret: str) -> ApiKey | None:
        async with self._reader.connect() as conn:
            r = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == hash_key(secret)))).first()
        return _key(r) if r else None

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self._reader.connect() as conn:
            r = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
        return _key(r) if r else None

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        q = select(api_keys).order_by(api_keys.c.created_at.desc())
        if tenant is not None:
            q = q.where(api_keys.c.tenant == tenant)
        async with self._reader.connect() as conn:
            return [_key(r) for r in await conn.execute(q)]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke (idempotent); None if there is no such key."""
        async with self._writer.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=utcnow()))
        return await self.get_key(key_id)

    # -- console sessions ---------------------------------------------------------------

    async def create_session(self, key_id: str, ttl: timedelta) -> tuple[str, ConsoleSession]:
        """A new session for a key: (the session id for the cookie, the session)."""
        key = await self.get_key(key_id)
        if key is None:
            raise KeyError(key_id)
        session_id, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), utcnow()
        # The key's own expiry bounds the session's.
        expires = min(now + ttl, key.expires_at) if key.expires_at else now + ttl
        async with self._writer.begin() as conn:
            await conn.execute(console_sessions.delete().where(console_sessions.c.expires_at < now))
            await conn.execute(console_sessions.insert().values(
                session_hash=hash_key(session_id), key_id=key_id, csrf_token=csrf, created_at=now,
                expires_at=expires))
        return session_id, ConsoleSession(key=key, csrf_token=csrf, expires_at=expires)

    async def find_session(self, session_id: str) -> ConsoleSession | None:
        """The session and its key as they are now (the caller checks the key is usable)."""
        q = (select(api_keys, console_sessions.c.csrf_token, console_sessions.c.expires_at.label("session_expires"))
             .join(console_sessions, console_sessions.c.key_id == api_keys.c.key_id)
             .where(console_sessions.c.session_hash == hash_key(session_id)))
        async with self._reader.connect() as conn:
            r = (await conn.execute(q)).first()
        if r is None:
            return None
        return ConsoleSession(key=_key(r), csrf_token=r.csrf_token, expires_at=_utc(r.session_expires))

    async def delete_session(self, session_id: str) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(console_sessions.delete().where(console_sessions.c.session_hash == hash_key(session_id)))

    # -- audit --------------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> None:
        """Append to the audit log. Entries that arrive while a write runs share the next
        transaction, so a burst of requests costs a few commits, not one each."""
        loop = asyncio.get_running_loop()
        self._audit_queue.append((entry, utcnow()))
        if self._audit_flusher is None or self._audit_flusher.done():
            self._audit_flusher = loop.create_task(self._flush_audit())
        await asyncio.shield(self._audit_flusher)

    async def _flush_audit(self) -> None:
        while self._audit_queue:
            batch, self._audit_queue = self._audit_queue[:500], self._audit_queue[500:]
            rows = [{"ts": ts, "key_id": e.key_id, "tenant": e.tenant, "role": e.role, "action": e.action[:200],
                     "target": e.target, "outcome": e.outcome, "client": e.client, "detail": e.detail}
                    for e, ts in batch]
            async with self._writer.begin() as conn:
                await conn.execute(audit_log.insert(), rows)

    async def audit_entries(self, *, tenant: str | None = None, action: str | None = None,
                            key_id: str | None = None, outcome: int | None = None, since: datetime | None = None,
                            limit: int = 100, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; the cursor resumes after the last entry returned."""
        q = select(audit_log)
        if tenant is not None:
            q = q.where(audit_log.c.tenant == tenant)
        if action is not None:
            q = q.where(audit_log.c.action.like(f"%{action}%"))
        if key_id is not None:
            q = q.where(audit_log.c.key_id == key_id)
        if outcome is not None:
            q = q.where(audit_log.c.outcome == outcome)
        if since is not None:
            q = q.where(audit_log.c.ts >= since)
        if cursor:
            q = q.where(audit_log.c.id < decode_audit_cursor(cursor))
        q = q.order_by(audit_log.c.id.desc()).limit(limit + 1)
        async with self._reader.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(q)]
        more = len(rows) > limit
        rows = rows[:limit]
        for r in rows:
            r["ts"] = _utc(r["ts"]).isoformat()
        return rows, (_encode_cursor(rows[-1]["id"]) if more and rows else None)

    # -- model usage (the OpenAI-compatible API; tasks keep theirs in their logs) -------

    async def record_model_usage(self, *, tenant: str, key_id: str | None, model: str, tokens_in: int,
                                 tokens_out: int, cost_usd: float, streamed: bool) -> None:
        async with self._writer.begin() as conn:
            await conn.execute(model_usage.insert().values(
                ts=utcnow(), tenant=tenant, key_id=key_id, model=model[:200], tokens_in=tokens_in,
                tokens_out=tokens_out, cost_usd=cost_usd, streamed=streamed))

    async def model_spend(self, tenant: str, since: datetime) -> tuple[float, int]:
        """(USD, calls) the tenant spent through the model API since `since`."""
        q = (select(func.coalesce(func.sum(model_usage.c.cost_usd), 0.0), func.count())
             .where(model_usage.c.tenant == tenant, model_usage.c.ts >= since))
        async with self._reader.connect() as conn:
            cost, calls = (await conn.execute(q)).one()
        return float(cost), int(calls)
