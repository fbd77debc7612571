"""Errors as RFC 9457 `application/problem+json`, and a body-size guard.

Every error the API returns goes through here, so a client sees one shape: the status,
a title, a detail that says what to fix, and for validation errors the field at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("troupe.gateway")

__all__ = ["BodyLimit", "Problem", "install_problem_handlers", "problem_response"]


class Problem(Exception):
    """Raise anywhere in a route to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 retry_after_s: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.retry_after_s, self.headers = errors, retry_after_s, headers


def problem_response(request_path: str, status: int, title: str, detail: str, *,
                     errors: list[dict[str, Any]] | None = None, retry_after_s: int | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail,
                            "instance": request_path}
    if errors:
        body["errors"] = errors
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    # Only the first item says where (a field may itself be called `query` or `path`).
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "(body)"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request.url.path, exc.status, exc.title, exc.detail, errors=exc.errors,
                                retry_after_s=exc.retry_after_s, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx", {})
            return problem_response(request.url.path, 400, "Malformed JSON",
                                    f"the body is not valid JSON: {ctx.get('error', 'parse error')} "
                                    f"(at position {bad_json[0]['loc'][-1]})")
        fields = [{"field": _field(tuple(e["loc"])), "message": e["msg"]} for e in errs]
        detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return problem_response(request.url.path, 422, "Invalid request", detail, errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        return problem_response(request.url.path, exc.status_code, titles.get(exc.status_code, "Error"),
                                str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(request.url.path, 500, "Internal error",
                                "the server failed on this request; it has been logged")


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit with 413, by header or while streaming.
    Limits are callables so that a reconfigured limit applies at once; multipart bodies (file
    uploads) have their own, larger limit when `max_upload_bytes` is given."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int], max_upload_bytes: Callable[[], int] | None = None):
        self.app, self.limit, self.upload_limit = app, max_bytes, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        max_bytes = self.upload_limit() if multipart and self.upload_limit is not None else self.limit()
        declared = headers.get(b"content-length")
        too_big = problem_response(scope["path"], 413, "Payload too large",
                                   f"the body is over the {max_bytes}-byte limit; send a smaller body")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    # Raised inside the route's body read, so the app's handler answers 413.
                    raise StarletteHTTPException(413, f"the body is over the {max_bytes}-byte limit; "
                                                      "send a smaller body")
            return message

        await self.app(scope, limited, send)
