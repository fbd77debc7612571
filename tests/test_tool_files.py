"""The `files` tool and `resolve_inside`: workspace I/O and escape attempts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools.registry import ToolArgumentError, ToolContext, ToolError, default_registry
from tools.workspace import resolve_inside


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path / "ws")


async def files(ctx: ToolContext, **args):
    return await default_registry.get("files")(ctx, args)


async def test_write_read_list(ctx):
    written = await files(ctx, action="write", path="notes/a.txt", content="h\u00e9llo\n")
    data = "h\u00e9llo\n".encode()
    assert written == {"path": "notes/a.txt", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (ctx.workspace / "notes" / "a.txt").read_bytes() == data

    read = await files(ctx, action="read", path="notes/a.txt")
    assert read == {"path": "notes/a.txt", "content": "h\u00e9llo\n", "bytes": len(data), "truncated": False}

    await files(ctx, action="write", path="b.txt", content="")
    listing = await files(ctx, action="list")
    assert listing == {
        "path": ".",
        "entries": [{"name": "b.txt", "type": "file", "size": 0}, {"name": "notes", "type": "dir", "size": None}],
    }
    assert (await files(ctx, action="list", path="notes"))["entries"] == [
        {"name": "a.txt", "type": "file", "size": len(data)}
    ]


async def test_write_replaces_and_leaves_no_temporary_files(ctx):
    await files(ctx, action="write", path="a.txt", content="one")
    await files(ctx, action="write", path="a.txt", content="two")
    assert [p.name for p in ctx.workspace.iterdir()] == ["a.txt"]
    assert (ctx.workspace / "a.txt").read_text() == "two"


async def test_read_truncates_at_max_bytes(ctx):
    await files(ctx, action="write", path="big.txt", content="x" * 100)
    read = await files(ctx, action="read", path="big.txt", max_bytes=10)
    assert read["content"] == "x" * 10
    assert read["bytes"] == 100
    assert read["truncated"] is True


async def test_helpful_errors(ctx):
    with pytest.raises(ToolError, match="needs `content`"):
        await files(ctx, action="write", path="a.txt")
    with pytest.raises(ToolError, match="no file 'missing.txt'"):
        await files(ctx, action="read", path="missing.txt")
    with pytest.raises(ToolError, match="is a directory"):
        await files(ctx, action="read", path=".")
    with pytest.raises(ToolError, match="only used by action 'write'"):
        await files(ctx, action="read", path="a.txt", content="x")
    with pytest.raises(ToolArgumentError) as exc:
        await files(ctx, action="delete", path="a.txt")
    assert exc.value.problems[0].startswith("action:")


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "..", "sub/../../../etc/passwd"])
@pytest.mark.parametrize("action", ["read", "write", "list"])
async def test_escapes_are_refused(ctx, path, action):
    args = {"content": "pwned"} if action == "write" else {}
    with pytest.raises(ToolError) as exc:
        await files(ctx, action=action, path=path, **args)
    assert repr(path) in exc.value.message
    assert not (ctx.workspace.parent / "x").exists()


async def test_symlink_to_outside_is_refused(ctx, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    ctx.workspace.mkdir()
    (ctx.workspace / "link.txt").symlink_to(secret)
    (ctx.workspace / "linkdir").symlink_to(tmp_path)
    with pytest.raises(ToolError, match="outside the task workspace"):
        await files(ctx, action="read", path="link.txt")
    with pytest.raises(ToolError, match="outside the task workspace"):
        await files(ctx, action="write", path="linkdir/new.txt", content="x")
    assert not (tmp_path / "new.txt").exists()
    # Listing shows the links as links, without following them.
    listing = await files(ctx, action="list")
    assert {e["name"]: e["type"] for e in listing["entries"]} == {"link.txt": "link", "linkdir": "link"}


def test_resolve_inside(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "up").symlink_to("..")  # a link that stays inside is fine
    assert resolve_inside(tmp_path, "inner/up/a.txt") == tmp_path.resolve() / "a.txt"
    assert resolve_inside(tmp_path, "") == tmp_path.resolve()
    for bad in ("../a", "/etc", "inner/../../a", "a\x00b"):
        with pytest.raises(ToolError):
            resolve_inside(tmp_path, bad)


async def test_another_tenants_workspace_is_out_of_reach(tmp_path):
    """With the real layout (`<home>/workspaces/<tenant>/<task>`), mallory's task reaches none
    of alice's files: not by `..`, not by absolute path, not through a link, and no sibling
    folder whose name merely starts like its own."""
    from troupe.settings import Settings

    settings = Settings(home=tmp_path / "home")
    alice = settings.workspace("alice", "task-a")
    (alice / "notes.txt").write_text("alice-SECRET")
    ctx = ToolContext(task_id="task-m", tenant="mallory", node_id="n1", idempotency_key="k1",
                      workspace=settings.workspace("mallory", "task-m"))
    settings.workspace("mallory", "task-m2")  # a sibling task of the same tenant
    (ctx.workspace / "to-alice").symlink_to(alice)
    (ctx.workspace / "dangling").symlink_to(alice / "planted.txt")  # a write through it would land there
    attempts = [("read", "../../alice/task-a/notes.txt"), ("read", str(alice / "notes.txt")),
                ("read", "to-alice/notes.txt"), ("list", "to-alice"), ("list", "../task-m2"),
                ("list", "../../alice"), ("write", "dangling"), ("write", "../task-m2/x.txt"),
                ("read", "../../../troupe.db")]
    for action, path in attempts:
        args = {"content": "pwned"} if action == "write" else {}
        with pytest.raises(ToolError) as exc:
            await files(ctx, action=action, path=path, **args)
        assert "alice-SECRET" not in exc.value.message
    assert not (alice / "planted.txt").exists() and not any((settings.workspaces / "mallory" / "task-m2").iterdir())
    assert (await files(ctx, action="write", path="own.txt", content="mine"))["path"] == "own.txt"
