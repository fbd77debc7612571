"""The audit log's writer: every request that changes something, and every refusal (401, 403,
429), becomes one row: who (key id, never the key), tenant, role, action, target, outcome,
when and from where. Reads are not logged, or the log would drown in polling."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memory.access import AccessStore, AuditEntry

__all__ = ["AuditMiddleware"]

log = logging.getLogger("troupe.gateway")

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_REFUSALS = frozenset({401, 403, 429})


class AuditMiddleware:
    def __init__(self, app: ASGIApp, access: Callable[[], AccessStore | None]):
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # unless a response starts: the app raised

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if scope["method"] not in _READS or status in _REFUSALS:
                await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        access = self.access()
        if access is None:
            return
        who = (scope.get("state") or {}).get("principal")
        route = scope.get("route")
        action = f"{scope['method']} {getattr(route, 'path', None) or scope['path']}"
        client = scope.get("client")
        try:
            await access.audit(AuditEntry(
                key_id=who.key_id if who else None, tenant=who.tenant if who else None,
                role=who.role.value if who else None, action=action, target=scope["path"][:1000], outcome=status,
                client=client[0] if client else None))
        except Exception:  # the request already happened; a lost audit row must not hide it
            log.exception("could not write the audit entry for %s", action)
