"""Any MCP server's tools as Troupe tools, through the official `mcp` SDK.

A server is declared in serve_config.yaml (`mcp_servers`): a stdio command, run as a
long-lived process owned by a ToolPool replica and restarted when it dies, or a
streamable-HTTP URL (checked against the egress policy) whose header secrets come from
environment variables. Its tools are listed with their JSON schemas, validated like built-in
tools, and declare `side_effects` from their annotations unless the config overrides them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.registry import (
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutcomeUnknown,
    ToolRegistry,
    ToolUnavailable,
)

__all__ = ["McpPool", "McpServerConfig", "McpTool", "add_mcp_tools", "list_server_tools"]

log = logging.getLogger("troupe.mcp")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class McpServerConfig(BaseModel):
    """One MCP server whose tools Troupe offers (an entry of `mcp_servers`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short name; its tools are called `<name>_<tool>` unless `prefix` says otherwise.")
    command: str | None = Field(None, description="A stdio server: the executable to run.")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of the stdio process.")
    env_from: dict[str, str] = Field(default_factory=dict, description=(
        "Environment of the stdio process taken from ours: {VAR_IN_SERVER: VAR_HERE}, for secrets."))
    url: str | None = Field(None, description="A streamable-HTTP server's URL (egress policy applies).")
    headers: dict[str, str] = Field(default_factory=dict, description="Plain headers sent to an HTTP server.")
    headers_from_env: dict[str, str] = Field(default_factory=dict, description=(
        "Headers whose values are environment variables: {Authorization: MY_SERVER_TOKEN}. A value is sent as "
        "it is, so put 'Bearer ...' in the variable."))
    prefix: str | None = Field(None, description="Prefix of its tools' names; default `<name>_`.")
    tenants: list[str] | None = Field(None, description="Tenants that may use its tools; default every tenant.")
    side_effects: dict[str, bool] = Field(default_factory=dict, description=(
        "Per tool (its name on the server, or `*`), whether it has side effects, over its annotations."))
    timeout_s: float = Field(120.0, gt=0, description="Longest wait for one call's answer.")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if not _NAME.match(self.name):
            raise ValueError(f"mcp server name {self.name!r} must match {_NAME.pattern}")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mcp server {self.name!r}: give exactly one of `command` (stdio) or `url` (HTTP); "
                             f"got command={self.command!r}, url={self.url!r}")
        return self

    @property
    def tool_prefix(self) -> str:
        return f"{self.name}_" if self.prefix is None else self.prefix

    def process_env(self) -> dict[str, str]:
        return {**self.env, **{k: os.environ[v] for k, v in self.env_from.items() if v in os.environ}}

    def http_headers(self) -> dict[str, str]:
        missing = [v for v in self.headers_from_env.values() if v not in os.environ]
        if missing:
            raise ToolError(f"mcp server {self.name!r} needs the environment variables {', '.join(missing)} "
                            "(headers_from_env); set them in the app's runtime_env or the cluster's Secret")
        return {**self.headers, **{h: os.environ[v] for h, v in self.headers_from_env.items()}}

    def key(self) -> str:
        return self.model_dump_json()


def _side_effects(cfg: McpServerConfig, name: str, annotations: Any) -> bool:
    """An annotated read-only or idempotent tool can be re-run; anything else may not (MCP's
    defaults: destructive, not idempotent)."""
    for key in (name, "*"):
        if key in cfg.side_effects:
            return cfg.side_effects[key]
    a = annotations
    if a is None:
        return True
    return not (bool(a.read_only_hint) or bool(a.idempotent_hint))


@dataclass(frozen=True)
class McpTool(Tool):
    """A tool of an MCP server: its schema is the server's; the call goes to `ctx.extras['mcp']`."""

    server: str = ""
    remote_name: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)
    tenants: tuple[str, ...] | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        schema = {k: v for k, v in self.input_schema.items() if k != "title"}
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        return schema

    def available_to(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def validate(self, args: dict[str, Any]) -> Any:
        errors = sorted(jsonschema.Draft202012Validator(self.parameters).iter_errors(args), key=lambda e: e.path)
        if errors:
            raise ToolArgumentError(self.name, [f"{'.'.join(str(p) for p in e.path) or '(arguments)'}: {e.message}"
                                                for e in errors])
        return args

    async def __call__(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        self.validate(args)
        if not self.available_to(ctx.tenant):
            raise ToolError(f"tool {self.name!r} is not offered to tenant {ctx.tenant!r}")
        pool = ctx.extras.get("mcp")
        if pool is None:
            raise ToolError(f"tool {self.name!r} runs only in the ToolPool (no MCP connections here)")
        return await pool.call(self.server, self.remote_name, args)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "source": f"mcp:{self.server}"}


async def _unused(ctx: ToolContext, **_: Any) -> None:  # McpTool overrides __call__
    raise AssertionError("unreachable")


class _NoArgs(BaseModel):
    pass


def _client(cfg: McpServerConfig) -> Any:
    from mcp import Client, StdioServerParameters

    if cfg.command is not None:
        return Client(StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.process_env()),
                      read_timeout_seconds=cfg.timeout_s, cache=None)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers=cfg.http_headers(), timeout=httpx2.Timeout(30, read=cfg.timeout_s))
    return Client(streamable_http_client(cfg.url, http_client=http), read_timeout_seconds=cfg.timeout_s, cache=None)


async def _check_egress(cfg: McpServerConfig) -> None:
    if cfg.url is not None:
        from tools.egress import check_url

        await check_url(cfg.url)


async def list_server_tools(cfg: McpServerConfig) -> list[Any]:
    """The server's tools (mcp `Tool` objects), from a short-lived connection."""
    await _check_egress(cfg)
    async with _client(cfg) as client:
        return list((await client.list_tools()).tools)


_listed: dict[str, list[Any]] = {}
_listing = threading.Lock()


def _list_blocking(cfg: McpServerConfig) -> list[Any]:
    """List in a thread of its own (callers may be inside a running event loop); once per process."""
    with _listing:
        if cfg.key() not in _listed:
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["tools"] = asyncio.run(asyncio.wait_for(list_server_tools(cfg), cfg.timeout_s))
                except BaseException as exc:  # reported below
                    box["error"] = exc

            t = threading.Thread(target=run, name=f"mcp-list-{cfg.name}", daemon=True)
            t.start()
            t.join()
            if "error" in box:
                raise box["error"]
            _listed[cfg.key()] = box["tools"]
        return _listed[cfg.key()]


def add_mcp_tools(registry: ToolRegistry, servers: list[McpServerConfig]) -> None:
    """Add each server's tools to `registry`. A server that cannot be listed is logged and
    skipped, so one bad server does not keep the app from starting."""
    for cfg in servers:
        try:
            listed = _list_blocking(cfg)
        except BaseException as exc:
            log.error("mcp server %r: could not list its tools (%s: %s); its tools are missing until the app "
                      "restarts", cfg.name, type(exc).__name__, exc)
            continue
        for t in listed:
            side = _side_effects(cfg, t.name, t.annotations)
            name = _TOOL_NAME.sub("_", cfg.tool_prefix + t.name)
            if name in registry and isinstance(registry.get(name), McpTool):
                continue
            registry.add(McpTool(name=name, description=t.description or t.title or t.name, fn=_unused,
                                 args_model=_NoArgs, side_effects=side, idempotent=not side, server=cfg.name,
                                 remote_name=t.name, input_schema=dict(t.input_schema or {}),
                                 tenants=tuple(cfg.tenants) if cfg.tenants is not None else None))


def _result(result: Any) -> Any:
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    if result.is_error:
        raise ToolError("; ".join(texts) or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    if len(texts) == 1 and len(result.content) == 1:
        return texts[0]
    return [c.model_dump(mode="json", exclude_none=True) for c in result.content]


_spawning = asyncio.Lock()


class _Connection:
    """One live session with one server, held open by a task of its own."""

    def __init__(self, cfg: McpServerConfig):
        self.cfg = cfg
        self.client: Any = None
        self.pid: int | None = None
        self.closed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def open(self) -> None:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(ready))
        await ready

    async def _hold(self, ready: asyncio.Future) -> None:
        import psutil

        try:
            async with contextlib.AsyncExitStack() as stack:
                # Spawns are one at a time, so the child that appears is this server's process.
                async with _spawning:
                    before = {p.pid for p in psutil.Process().children()}
                    client = await stack.enter_async_context(_client(self.cfg))
                    if self.cfg.command is not None:
                        new = [p.pid for p in psutil.Process().children() if p.pid not in before]
                        self.pid = new[0] if len(new) == 1 else None
                        if self.pid is None:
                            log.warning("mcp server %r: cannot tell its process (%d new children); a death is "
                                        "noticed only when a call fails", self.cfg.name, len(new))
                self.client = client
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("mcp server %r: connection ended (%s)", self.cfg.name, type(exc).__name__)
        finally:
            self.closed.set()

    def alive(self) -> bool:
        if self.closed.is_set() or self.client is None:
            return False
        if self.pid is None:
            return True
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            self._task.cancel()


class McpPool:
    """The MCP connections of one ToolPool replica: opened on first use, reopened when dead."""

    def __init__(self, servers: list[McpServerConfig]):
        self.servers = {s.name: s for s in servers}
        self._conns: dict[str, _Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.restarts: dict[str, int] = {}

    async def _connection(self, server: str) -> _Connection:
        cfg = self.servers[server]
        async with self._locks.setdefault(server, asyncio.Lock()):
            conn = self._conns.get(server)
            if conn is not None and conn.alive():
                return conn
            if conn is not None:
                self.restarts[server] = self.restarts.get(server, 0) + 1
                log.warning("mcp server %r is gone; starting it again (restart %d)", server, self.restarts[server])
                await conn.close()
            await _check_egress(cfg)
            conn = _Connection(cfg)
            try:
                await asyncio.wait_for(conn.open(), cfg.timeout_s)
            except ToolError:
                raise
            except Exception as exc:  # nothing was sent: an outage (a restart slow under load), not an attempt
                raise ToolUnavailable(f"mcp server {server!r} could not be reached: {type(exc).__name__}: {exc}") \
                    from None
            self._conns[server] = conn
            return conn

    async def call(self, server: str, tool: str, args: dict[str, Any]) -> Any:
        conn = await self._connection(server)
        call = asyncio.ensure_future(conn.client.call_tool(tool, args))
        # The SDK notices a dead stdio process only when it reads; a watcher notices sooner.
        while not call.done():
            await asyncio.wait({call}, timeout=0.25)
            if not call.done() and not conn.alive():
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call
                raise ToolOutcomeUnknown(f"mcp server {server!r} died during the call of {tool!r}")
        try:
            result = call.result()
        except ToolError:
            raise
        except Exception as exc:
            from mcp.shared.exceptions import MCPError
            from mcp.types import CONNECTION_CLOSED

            # The server's own error, unless the connection closed: then the process died (its
            # exit may not show yet) and whether the call ran is unknown.
            if isinstance(exc, MCPError) and exc.code != CONNECTION_CLOSED and conn.alive():
                raise ToolError(f"mcp server {server!r}: {exc}") from None
            raise ToolOutcomeUnknown(f"mcp server {server!r} lost the call of {tool!r}: "
                                     f"{type(exc).__name__}: {exc}") from None
        return _result(result)

    def pids(self) -> dict[str, int | None]:
        return {name: c.pid for name, c in self._conns.items() if c.alive()}

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
