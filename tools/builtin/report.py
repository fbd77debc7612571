"""The `write_report` tool: render a Markdown report into the task's workspace."""

from __future__ import annotations

import asyncio
import hashlib
import json
from string import Template
from typing import Any

from tools.builtin.files import write_atomically
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import resolve_inside

__all__ = ["render", "write_report"]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return str(value)


def render(title: str, body: str, template: str | None, inputs: dict[str, Any]) -> str:
    """The report's Markdown; a template sees `inputs` plus `$title` and `$body`."""
    if template is None:
        return f"# {title}\n\n{body}\n"
    tpl = Template(template)
    if not tpl.is_valid():
        raise ToolError(
            "the template has an invalid placeholder; use $name or ${name} with letters, digits "
            "and underscores, and write $$ for a literal dollar sign"
        )
    values = {key: _text(value) for key, value in inputs.items()} | {"title": title, "body": body}
    missing = sorted(set(tpl.get_identifiers()) - values.keys())
    if missing:
        raise ToolError(
            f"the template uses variables with no value: {', '.join(missing)}; "
            "add them to `inputs` or remove them from the template"
        )
    return tpl.substitute(values)


@tool
async def write_report(
    ctx: ToolContext,
    title: str,
    body: str = "",
    template: str | None = None,
    inputs: dict[str, Any] | None = None,
    name: str = "report.md",
) -> dict[str, Any]:
    """Write a Markdown report into the task workspace and return it as an artifact.

    Args:
        title: The report's title.
        body: Markdown body; used as is when there is no template, and as $body in one.
        template: Optional Markdown with $name / ${name} placeholders filled from `inputs`,
            $title and $body; write $$ for a literal dollar sign.
        inputs: Values for the template's placeholders.
        name: File name of the report inside the workspace; must end with .md.
    """
    if not name.endswith(".md"):
        raise ToolError(f"report name {name!r} must end with .md, e.g. 'report.md'")
    markdown = render(title, body, template, inputs or {})
    data = markdown.encode("utf-8")

    def write() -> str:
        ctx.workspace.mkdir(parents=True, exist_ok=True)
        root = ctx.workspace.resolve()
        target = resolve_inside(root, name)
        write_atomically(target, data)
        return target.relative_to(root).as_posix()

    try:
        artifact = await asyncio.to_thread(write)
    except OSError as exc:
        raise ToolError(f"could not write report {name!r}: {exc.strerror or exc}") from None
    return {"artifact": artifact, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
