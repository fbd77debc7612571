"""The `write_report` tool: rendering, template errors, where it may write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools.registry import ToolContext, ToolError, default_registry


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path / "ws")


async def report(ctx: ToolContext, **args):
    return await default_registry.get("write_report")(ctx, args)


async def test_plain_report(ctx):
    result = await report(ctx, title="Findings", body="All good.")
    data = b"# Findings\n\nAll good.\n"
    assert result == {"artifact": "report.md", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (ctx.workspace / "report.md").read_bytes() == data


async def test_template_render(ctx):
    template = "# $title\n\nPrice: $$${price} for ${count} items\n\n$body\n\n$table\n"
    result = await report(
        ctx,
        title="Q3",
        body="Summary.",
        template=template,
        inputs={"price": 9.5, "count": 3, "table": {"a": 1}},
        name="out/q3.md",
    )
    assert result["artifact"] == "out/q3.md"
    text = (ctx.workspace / "out" / "q3.md").read_text()
    assert text == '# Q3\n\nPrice: $9.5 for 3 items\n\nSummary.\n\n{\n  "a": 1\n}\n'


async def test_missing_variables_are_named(ctx):
    with pytest.raises(ToolError) as exc:
        await report(ctx, title="T", template="$title $zeta ${alpha}", inputs={})
    assert "variables with no value: alpha, zeta" in exc.value.message
    assert not (ctx.workspace / "report.md").exists()


async def test_invalid_placeholder_says_how_to_escape(ctx):
    with pytest.raises(ToolError, match=r"write \$\$ for a literal dollar sign"):
        await report(ctx, title="T", template="costs $5")


@pytest.mark.parametrize("name", ["../escape.md", "/tmp/escape.md", "a/../../escape.md"])
async def test_name_traversal_is_refused(ctx, name):
    with pytest.raises(ToolError, match="workspace|absolute"):
        await report(ctx, title="T", name=name)
    assert not (ctx.workspace.parent / "escape.md").exists()


async def test_name_must_be_markdown(ctx):
    with pytest.raises(ToolError, match="must end with .md"):
        await report(ctx, title="T", name="report.html")
