"""The tool registry: a tool is a typed async function with a Google docstring.

Its argument JSON schema is generated from the signature (never hand-written), and
arguments are validated against it before the call, so a bad argument becomes an error
that names the field instead of an exception inside the tool.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

__all__ = [
    "Tool",
    "ToolArgumentError",
    "ToolContext",
    "ToolError",
    "ToolOutcomeUnknown",
    "ToolRegistry",
    "ToolUnavailable",
    "UnknownToolError",
    "default_registry",
    "load_registry",
    "tool",
]


@dataclass(frozen=True)
class ToolContext:
    """What a tool knows about the call it serves; passed as the first parameter `ctx`."""

    task_id: str
    tenant: str
    node_id: str
    idempotency_key: str
    workspace: Path
    """The task's own directory; tools that touch files must stay inside it."""
    attempt: int = 1
    extras: dict[str, Any] = field(default_factory=dict)
    """Services a deployment hands its tools (handles, pools); keyed by name."""
    deadline: float | None = None
    """time.monotonic() at which the caller stops waiting for this call (None: not said). A
    tool's own waits (a queue, a slot) must end before it: the caller cut off by its timeout
    cannot tell whether the call ran."""

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


class ToolError(Exception):
    """A tool failed in a way the caller should see; `retryable` says whether a retry may help."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ToolOutcomeUnknown(ToolError):
    """The call may or may not have taken effect (the server running it died mid-way): an
    idempotent tool is simply run again, a side-effecting one goes to the user."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class ToolUnavailable(ToolError):
    """What the tool needs could not be reached and nothing was sent (an MCP server that does
    not start): an outage the caller waits out and asks again, not a failed attempt."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


class UnknownToolError(LookupError):
    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown tool {name!r}; known tools: {', '.join(self.known) or '(none)'}")


class ToolArgumentError(ValueError):
    """Arguments that do not match the tool's signature; `problems` names each field."""

    def __init__(self, tool_name: str, problems: list[str]):
        self.tool_name = tool_name
        self.problems = problems
        super().__init__(f"bad arguments for tool {tool_name!r}: " + "; ".join(problems))


def _describe(errors: list[dict[str, Any]]) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}" for e in errors]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Awaitable[Any]]
    args_model: type[BaseModel]
    side_effects: bool
    """True when running it twice would be wrong (effects outside the task's workspace)."""
    idempotent: bool = True
    """Running it again gives the same effect: a run in doubt is simply repeated. A tool with
    side effects is never idempotent; its runs in doubt go to the user."""
    holds_session: bool = False
    """Its calls keep state for the task in another deployment (a browser session) that
    `ToolPool.release` frees when the task ends; tasks that never call such a tool skip that hop."""

    @property
    def parameters(self) -> dict[str, Any]:
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        return schema

    def validate(self, args: dict[str, Any]) -> BaseModel:
        try:
            return self.args_model.model_validate(args)
        except ValidationError as exc:
            raise ToolArgumentError(self.name, _describe(exc.errors())) from None

    async def __call__(self, ctx: ToolContext, args: dict[str, Any]) -> Any:
        parsed = self.validate(args)
        return await self.fn(ctx, **{name: getattr(parsed, name) for name in parsed.model_fields})

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "side_effects": self.side_effects,
            "idempotent": self.idempotent,
        }


def _build(fn: Callable[..., Awaitable[Any]], name: str | None, side_effects: bool,
           idempotent: bool | None = None, holds_session: bool = False) -> Tool:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {fn.__qualname__} must be an async function")
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].name != "ctx":
        raise TypeError(f"tool {fn.__qualname__} must take `ctx: ToolContext` as its first parameter")
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    arg_docs = {p.arg_name: p.description for p in doc.params}
    hints = inspect.get_annotations(fn, eval_str=True)
    fields: dict[str, Any] = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__qualname__} may not take *args or **kwargs")
        if p.name not in hints:
            raise TypeError(f"tool {fn.__qualname__}: parameter {p.name!r} needs a type annotation")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], Field(default, description=arg_docs.get(p.name)))
    tool_name = name or fn.__name__
    model = create_model(  # type: ignore[call-overload]
        f"{tool_name}_args", __config__=ConfigDict(extra="forbid"), **fields
    )
    description = "\n\n".join(x for x in (doc.short_description, doc.long_description) if x)
    if side_effects and idempotent:
        raise TypeError(f"tool {fn.__qualname__} cannot be both side_effects=True and idempotent=True: a tool whose "
                        "effects make a second run wrong is not idempotent; drop one of the two")
    return Tool(tool_name, description, fn, model, side_effects,
                idempotent=not side_effects if idempotent is None else idempotent, holds_session=holds_session)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def add(self, t: Tool) -> Tool:
        if t.name in self._tools and self._tools[t.name].fn is not t.fn:
            raise ValueError(f"two tools are named {t.name!r}; rename one with @tool(name=...)")
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(name, self._tools) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [t.spec() for t in self.available(tenant).values()]

    def available(self, tenant: str | None = None) -> dict[str, Tool]:
        """The tools by name; with `tenant`, only those offered to it (an MCP server may be per tenant)."""
        tools = {n: self._tools[n] for n in self.names()}
        if tenant is None:
            return tools
        return {n: t for n, t in tools.items() if getattr(t, "available_to", lambda _: True)(tenant)}

    def load_modules(self, modules: Iterable[str]) -> None:
        """Import modules whose `@tool` functions register themselves here."""
        for module in modules:
            importlib.import_module(module)


default_registry = ToolRegistry()


def load_registry(modules: Iterable[str], mcp_servers: Iterable[Any] = ()) -> ToolRegistry:
    """The process-wide registry with `modules` imported into it, and the tools of the MCP
    servers (`McpServerConfig`s, tools/mcp_client.py) added.

    Deployment classes call this rather than naming `default_registry`: Serve pickles a
    deployment class by value, globals included, which would hand each replica an empty
    copy of the registry instead of the one its imports fill.
    """
    default_registry.load_modules(modules)
    servers = list(mcp_servers)
    if servers:
        from tools.mcp_client import add_mcp_tools

        add_mcp_tools(default_registry, servers)
    return default_registry


def tool(
    fn: Callable[..., Awaitable[Any]] | None = None,
    *,
    name: str | None = None,
    side_effects: bool = False,
    idempotent: bool | None = None,
    holds_session: bool = False,
    registry: ToolRegistry | None = None,
) -> Any:
    """Register an async function as a tool: `@tool`, `@tool(side_effects=True)`, or
    `@tool(idempotent=False)` for one whose run in doubt must not be repeated on its own
    (default: idempotent unless it has side effects); `holds_session=True` for one whose
    calls keep per-task state elsewhere that must be released when the task ends."""

    def register(f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        (registry or default_registry).add(_build(f, name, side_effects, idempotent, holds_session))
        return f

    return register(fn) if fn is not None else register
