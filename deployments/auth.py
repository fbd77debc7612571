"""Identity for every route: a bearer credential (API key, or an OIDC token when configured)
becomes a Principal (key, tenant, role). Never a header the client picks: only an admin may
act for another tenant with `X-Troupe-Tenant`.

Routes declare the least role they need with the `Viewer`, `Member` or `Admin` annotations.

The web console signs in once with a key and then holds a session cookie (deployments/console/):
without an Authorization header, that cookie is the credential. It is re-checked against the
key table like a key (revoked key: refused within `cache_ttl_s`), and a state-changing request
made with it must carry the session's CSRF token and, when the browser sends one, a same-host
Origin.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.problems import Problem
from memory.access import KEY_PREFIX, AccessStore, ApiKey, ConsoleSession, Role
from troupe.models import utcnow

__all__ = ["ACT_COOKIE", "Admin", "Authenticator", "CSRF_HEADER", "Member", "OidcSettings", "Principal",
           "SESSION_COOKIE", "TENANT_PATTERN", "Viewer", "same_origin", "session_principal", "write_admin_key"]

log = logging.getLogger("troupe.gateway")

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="troupe"'}
SESSION_COOKIE = "troupe_session"
ACT_COOKIE = "troupe_act"
"""An admin's console session acts for this tenant (set by the console's tenant switch)."""
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    key_id: str
    """The API key's id (`key_...`), or `oidc:<subject>`; never the secret."""
    role: Role
    home_tenant: str
    """The tenant the credential belongs to."""
    tenant: str
    """The tenant this request acts for: the home tenant, or for admins `X-Troupe-Tenant`."""
    csrf_token: str | None = None
    """Set when the credential is a console session: the token its forms and requests carry."""

    def can(self, role: Role) -> bool:
        return self.role.allows(role)


class OidcSettings(BaseSettings):
    """Optional OIDC/JWT bearer tokens (`TROUPE_OIDC_*`): on when an issuer is set."""

    model_config = SettingsConfigDict(env_prefix="TROUPE_OIDC_", extra="ignore")

    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = Field(None, description="Where the issuer publishes its signing keys.")
    jwks_file: Path | None = Field(None, description="The signing keys as a JWKS file, instead of a URL.")
    tenant_claim: str = "tenant"
    role_claim: str = "role"
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])


class _Oidc:
    def __init__(self, cfg: OidcSettings):
        if not (cfg.jwks_url or cfg.jwks_file):
            raise ValueError("TROUPE_OIDC_ISSUER is set: set TROUPE_OIDC_JWKS_URL or TROUPE_OIDC_JWKS_FILE too")
        self.cfg = cfg
        self._client = jwt.PyJWKClient(cfg.jwks_url, cache_keys=True, lifespan=300) if cfg.jwks_url else None
        self._keys = jwt.PyJWKSet.from_json(cfg.jwks_file.read_text()) if cfg.jwks_file else None

    async def verify(self, token: str) -> tuple[str, str, Role]:
        """(subject, tenant, role) of a valid token; raises jwt.PyJWTError or ValueError."""
        if self._client is not None:  # PyJWKClient fetches over blocking HTTP (cached for 5 min)
            key = (await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)).key
        else:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next((k.key for k in self._keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                raise ValueError(f"no signing key {kid!r} in {self.cfg.jwks_file}")
        claims = jwt.decode(token, key, algorithms=self.cfg.algorithms, audience=self.cfg.audience,
                            issuer=self.cfg.issuer, options={"require": ["exp", "sub"]})
        tenant, role = claims.get(self.cfg.tenant_claim), claims.get(self.cfg.role_claim, "viewer")
        if not isinstance(tenant, str) or not tenant:
            raise ValueError(f"the token has no {self.cfg.tenant_claim!r} claim naming the tenant")
        if role not in Role.__members__:
            raise ValueError(f"claim {self.cfg.role_claim!r} is {role!r}; it must be viewer, member or admin")
        return str(claims["sub"]), tenant, Role(role)


class Authenticator:
    """Checks credentials against the key table. A key looked up is trusted for at most
    `cache_ttl_s`, so a revocation holds on every Gateway replica within that time."""

    def __init__(self, access: AccessStore, oidc: OidcSettings | None = None, cache_ttl_s: float = 1.0):
        self.access = access
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._inflight: dict[str, asyncio.Future[ApiKey | None]] = {}
        self._sessions: dict[str, tuple[float, ConsoleSession | None]] = {}
        self._oidc = _Oidc(oidc) if oidc is not None and oidc.issuer else None

    async def identify(self, secret: str) -> tuple[str, str, Role]:
        """(key id, home tenant, role) of a credential, or a 401 Problem saying why not."""
        if self._oidc is not None and secret.count(".") == 2 and not secret.startswith(KEY_PREFIX):
            try:
                subject, tenant, role = await self._oidc.verify(secret)
            except (jwt.PyJWTError, ValueError) as exc:
                raise _unauthorized(f"the bearer token was refused: {exc}") from None
            return f"oidc:{subject}"[:32], tenant, role
        key = await self._lookup(secret)
        if key is None:
            raise _unauthorized("the API key is not valid; create one with `troupe keys create` (admin)")
        if key.revoked_at is not None:
            raise _unauthorized(f"API key {key.prefix}... was revoked; ask an admin for a new one")
        if not key.usable(utcnow()):
            raise _unauthorized(f"API key {key.prefix}... expired at {key.expires_at:%Y-%m-%d %H:%M} UTC; "
                                "ask an admin for a new one")
        return key.key_id, key.tenant, key.role

    async def identify_session(self, session_id: str) -> ConsoleSession:
        """The console session behind a cookie, or a 401 Problem: unknown, ended, or its key
        revoked or expired (looked up at most `cache_ttl_s` ago, like a key)."""
        now = time.monotonic()
        hit = self._sessions.get(session_id)
        if hit is not None and hit[0] > now:
            session = hit[1]
        else:
            session = await self.access.find_session(session_id)
            if len(self._sessions) > 10_000:
                self._sessions = {s: v for s, v in self._sessions.items() if v[0] > now}
            self._sessions[session_id] = (now + self.cache_ttl_s, session)
        at = utcnow()
        if session is None or session.expires_at <= at:
            raise _unauthorized("the console session ended; sign in again with an API key")
        if not session.key.usable(at):
            raise _unauthorized(f"API key {session.key.prefix}... was revoked or expired; sign in with another key")
        return session

    def forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def _lookup(self, secret: str) -> ApiKey | None:
        hit = self._cache.get(secret)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        # Requests that miss together share one query: a burst from one client is one lookup.
        pending = self._inflight.get(secret)
        if pending is None:
            pending = self._inflight[secret] = asyncio.ensure_future(self._fetch(secret))
            pending.add_done_callback(lambda _: self._inflight.pop(secret, None))
        return await asyncio.shield(pending)

    async def _fetch(self, secret: str) -> ApiKey | None:
        key = await self.access.find_by_secret(secret)
        now = time.monotonic()
        if len(self._cache) > 10_000:
            self._cache = {s: v for s, v in self._cache.items() if v[0] > now}
        self._cache[secret] = (now + self.cache_ttl_s, key)
        return key


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers=_CHALLENGE)


_bearer = HTTPBearer(auto_error=False, description="An API key (`troupe keys create`), or an OIDC token.")


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin, else Referer).
    Host only, not scheme: a TLS proxy in front may speak plain HTTP to us."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True  # not a browser-made cross-site request: browsers send Origin on POST
    if source == "null":
        return False
    return urlsplit(source).netloc.lower() == request.headers.get("host", "").lower()


async def session_principal(request: Request, csrf_token: str | None = None) -> Principal:
    """The Principal of a console session cookie, or a 401/403 Problem. A state-changing
    request must carry the session's CSRF token (`csrf_token`, else the X-CSRF-Token header)
    and come from this site."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise _unauthorized("send `Authorization: Bearer <API key>`; the first admin key is in "
                            "$TROUPE_HOME/admin.key, or set TROUPE_API_KEY for the CLI")
    session = await request.app.state.backend.auth.identify_session(session_id)
    if request.method not in _SAFE_METHODS:
        sent = csrf_token if csrf_token is not None else request.headers.get(CSRF_HEADER, "")
        if not same_origin(request) or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
            raise Problem(403, "Forbidden", f"a console request that changes something needs the {CSRF_HEADER} "
                                            "header of its session and must come from this site; reload the page")
    key = session.key
    # An admin's session may act for another tenant, as X-Troupe-Tenant lets an admin key do;
    # anyone else's cookie of that name is ignored.
    acting = request.cookies.get(ACT_COOKIE, "")
    tenant = acting if key.role.allows(Role.admin) and re.fullmatch(TENANT_PATTERN, acting) else key.tenant
    return Principal(key_id=key.key_id, role=key.role, home_tenant=key.tenant, tenant=tenant,
                     csrf_token=session.csrf_token)


def _requires(role: Role) -> Any:
    async def principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        acting_for: Annotated[str | None, Header(
            alias="X-Troupe-Tenant", pattern=TENANT_PATTERN,
            description="Admins: the tenant to act for. Others may only name their own.")] = None,
    ) -> Principal:
        backend = request.app.state.backend
        if credentials is None:
            session = await session_principal(request)
            key_id, home, granted, csrf = session.key_id, session.home_tenant, session.role, session.csrf_token
            tenant = acting_for or session.tenant
        else:
            key_id, home, granted = await backend.auth.identify(credentials.credentials)
            csrf = None
            tenant = acting_for or home
        who = Principal(key_id=key_id, role=granted, home_tenant=home, tenant=tenant, csrf_token=csrf)
        request.state.principal = who  # for the audit log
        if tenant != home and not granted.allows(Role.admin):
            raise Problem(403, "Forbidden", f"this key belongs to tenant {home!r}; only an admin key may act for "
                                            f"tenant {tenant!r} (drop X-Troupe-Tenant)")
        if not granted.allows(role):
            raise Problem(403, "Forbidden", f"this needs the {role.value} role; the key has {granted.value}")
        limits = backend.limits_for(tenant)
        denied = await backend.limiter.take(tenant, "requests", limits.requests_per_s, limits.requests_burst)
        if denied is not None:
            raise Problem(429, "Rate limited", f"tenant {tenant!r} is over its request limit {denied.limit}; "
                                               f"retry in {denied.retry_after_s} s",
                          retry_after_s=denied.retry_after_s)
        return who

    return Depends(principal)


Viewer = Annotated[Principal, _requires(Role.viewer)]
Member = Annotated[Principal, _requires(Role.member)]
Admin = Annotated[Principal, _requires(Role.admin)]


async def optional_admin(request: Request) -> bool:
    """True when the request carries a valid admin credential; never raises (for /healthz)."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        try:
            return (await session_principal(request)).role.allows(Role.admin)
        except Problem:
            return False
    try:
        _, _, role = await request.app.state.backend.auth.identify(secret.strip())
    except Problem:
        return False
    return role.allows(Role.admin)


def write_admin_key(path: Path, secret: str) -> None:
    """The first admin key, readable by the server's user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secret + "\n")
