"""The `python` sandbox cannot see Troupe's state: tenant mallory's code tries every way in to
tenant alice's data under TROUPE_HOME, under real namespaces, and gets none of it."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools import sandbox
from tools.registry import ToolContext, ToolError, default_registry
from tests.support.visible import hidden_by_sandbox, visible_base
from troupe.settings import Settings

# The sandbox's interpreter loads the service's site-packages; from a virtualenv under /tmp
# (a checkout there) it cannot, and these probes burn their CPU limit instead of running.
pytestmark = pytest.mark.skipif(hidden_by_sandbox(sys.prefix), reason=(
    f"the virtualenv {sys.prefix} is under a folder the sandbox replaces with its own tmpfs; "
    "run the tests from a checkout outside /tmp"))

# Everything mallory's code tries, each attempt printed with what it got back.
PROBE = """
import os, re, sqlite3
home, alice_ws = {home!r}, {alice_ws!r}
def attempt(label, fn):
    try:
        print(label, "->", fn())
    except Exception as e:
        print(label, "-> refused:", type(e).__name__, e)
def grep(path):  # what an attacker keeps of a file: the strings that look like secrets
    with open(path, "rb") as f:
        return [m.decode() for m in re.findall(rb"[A-Za-z0-9_-]*SECRET[A-Za-z0-9_-]*", f.read())]
def read_all(top):
    return {{os.path.join(d, n): grep(os.path.join(d, n)) for d, _, names in os.walk(top) for n in names}}
attempt("sqlite", lambda: sqlite3.connect("file:" + home + "/troupe.db?mode=ro", uri=True)
        .execute("select task_id, payload from events").fetchall())
attempt("sqlite-bytes", lambda: grep(home + "/troupe.db"))
attempt("walk-home", lambda: read_all(home))
attempt("alice-workspace", lambda: open(alice_ws + "/notes.txt").read())
attempt("admin-key", lambda: open(home + "/admin.key").read())
attempt("qdrant", lambda: read_all(home + "/qdrant"))
attempt("upload-staging", lambda: read_all(home + "/uploads"))
attempt("up-from-cwd", lambda: read_all(os.path.dirname(os.getcwd())))
attempt("own-workdir", lambda: (open("mine.txt", "w").write("mine"), open(os.getcwd() + "/mine.txt").read()))
print("cwd ->", repr(os.getcwd()))
"""


def attempts(out: str) -> dict[str, str]:
    return dict(line.split(" -> ", 1) for line in out.splitlines() if " -> " in line)


def only_own_files(found: str, cwd: str) -> bool:
    """A walk that found nothing but the sandbox's own folder (its main.py)."""
    return all(path.startswith(cwd + "/") for path in ast.literal_eval(found))


@pytest.fixture
def secrets() -> dict[str, str]:
    return {k: f"{k}-SECRET-{uuid.uuid4().hex}" for k in ("goal", "notes", "admin", "qdrant", "upload")}


@pytest.fixture
def state(tmp_path, monkeypatch, secrets):
    """A Troupe home outside /tmp (a fresh tmpfs in the sandbox anyway), planted with alice's
    data; HOME and the cwd point elsewhere so that only the TROUPE_HOME cover can hide it."""
    base = Path(tempfile.mkdtemp(prefix=".sandbox-test-", dir=visible_base()))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the service's cwd is covered too; keep that cover out of this test
    monkeypatch.delenv("TROUPE_HOME", raising=False)
    settings = Settings(home=base / "home")
    settings.ensure_home()
    db = sqlite3.connect(settings.home / "troupe.db")
    db.execute("create table events (task_id text, seq int, ts real, type text, payload text)")
    db.execute("insert into events values ('alice-task', 1, 0, 'task.created', ?)",
               (json.dumps({"tenant": "alice", "goal": secrets["goal"]}),))
    db.commit()
    db.close()
    alice_ws = settings.workspace("alice", "alice-task")
    (alice_ws / "notes.txt").write_text(secrets["notes"])
    (settings.home / "admin.key").write_text(secrets["admin"])
    (settings.home / "qdrant" / "collection").mkdir(parents=True)
    (settings.home / "qdrant" / "collection" / "storage.sqlite").write_text(secrets["qdrant"])
    staging = settings.tenant_uploads("alice") / ".staging" / "job-1"
    staging.mkdir(parents=True)
    (staging / "report.md").write_text(secrets["upload"])
    mallory = ToolContext(task_id="mallory-task", tenant="mallory", node_id="n1", idempotency_key="k1",
                          workspace=settings.workspace("mallory", "mallory-task"))
    yield settings, alice_ws, mallory
    shutil.rmtree(base, ignore_errors=True)


def open_to_all(top: Path) -> None:
    """Undo the 0700 modes, as if the sandbox ran as the owner of the files (a service that is
    not root runs its code as its own uid): only the cover is left to hide them."""
    for folder, dirs, names in os.walk(top):
        os.chmod(folder, 0o755)
        for n in names:
            os.chmod(os.path.join(folder, n), 0o644)


@pytest.fixture
async def namespaces(monkeypatch):
    monkeypatch.setenv("TROUPE_PYTHON_NAMESPACES", "auto")
    if not (await sandbox.isolation()).namespaces:
        pytest.skip("no user namespaces on this machine")


async def test_probe_sees_everything_without_the_cover(state, secrets, namespaces):
    """The control: the same code, with everything hidden but TROUPE_HOME, reads every planted
    secret; so the test below fails if the cover of TROUPE_HOME goes."""
    settings, alice_ws, _ = state
    open_to_all(settings.home.parent)
    probe = PROBE.format(home=str(settings.home), alice_ws=str(alice_ws))
    out = await sandbox.run_sandboxed(await sandbox.isolation(), probe, "", 30, sandbox.Limits.from_env(),
                                      hide=sandbox.hidden_paths())
    assert out.status.get("exit") == 0, out.stderr
    for secret in secrets.values():
        assert secret in out.stdout


async def test_mallory_reads_nothing_of_troupe_home(state, secrets, namespaces):
    settings, alice_ws, mallory = state
    open_to_all(settings.home.parent)
    probe = PROBE.format(home=str(settings.home), alice_ws=str(alice_ws))
    out = await default_registry.get("python")(mallory, {"code": probe})
    for secret in secrets.values():
        assert secret not in out
    got = attempts(out)
    assert got["sqlite"].startswith("refused: OperationalError")
    assert got["alice-workspace"].startswith("refused: FileNotFoundError")
    assert got["admin-key"].startswith("refused: FileNotFoundError")
    assert got["walk-home"] == "{}" and got["qdrant"] == "{}" and got["upload-staging"] == "{}"
    cwd = ast.literal_eval(got["cwd"])
    assert only_own_files(got["up-from-cwd"], cwd)  # the folder above its own is an empty tmpfs
    assert got["own-workdir"] == "(4, 'mine')"


async def test_a_workdir_inside_troupe_home_is_mounted_back_alone(state, secrets, namespaces, monkeypatch):
    """Even when the sandbox's folder lives inside TROUPE_HOME, only that folder shows, and
    `..` from it does not walk the covered folder beneath."""
    settings, alice_ws, mallory = state
    monkeypatch.setattr(tempfile, "tempdir", str(settings.workspace("mallory", "scratch")))
    open_to_all(settings.home.parent)
    probe = PROBE.format(home=str(settings.home), alice_ws=str(alice_ws))
    out = await default_registry.get("python")(mallory, {"code": probe})
    for secret in secrets.values():
        assert secret not in out
    got = attempts(out)
    cwd = ast.literal_eval(got["cwd"])
    assert cwd.startswith(str(settings.home) + "/")
    assert only_own_files(got["walk-home"], cwd) and only_own_files(got["up-from-cwd"], cwd)
    assert got["alice-workspace"].startswith("refused: FileNotFoundError")
    assert got["own-workdir"] == "(4, 'mine')"


async def test_private_folders_alone_stop_a_throwaway_uid(state, secrets, namespaces):
    """The second layer: where the code runs as a uid of its own (the service is root), the
    0700 folders keep it out even without the cover."""
    if not (await sandbox.isolation()).uid_per_run:
        pytest.skip("the code runs as the service's own uid here")
    settings, alice_ws, _ = state
    os.chmod(settings.home.parent, 0o755)  # up to the home itself, anyone may pass
    probe = PROBE.format(home=str(settings.home), alice_ws=str(alice_ws))
    out = await sandbox.run_sandboxed(await sandbox.isolation(), probe + "print('shadow', open('/etc/shadow').read())",
                                      "", 30, sandbox.Limits.from_env(), hide=sandbox.hidden_paths())
    for secret in secrets.values():
        assert secret not in out.stdout
    assert attempts(out.stdout)["admin-key"].startswith("refused: PermissionError")
    assert "PermissionError" in out.stderr and "shadow" not in out.stdout  # nor the host's password hashes


async def test_workspaces_are_private_folders(state):
    settings, alice_ws, _ = state
    for folder in (settings.home, settings.workspaces, alice_ws.parent, alice_ws, settings.tenant_uploads("alice")):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


async def test_without_namespaces_it_refuses_and_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TROUPE_PYTHON_NAMESPACES", "0")
    monkeypatch.delenv(sandbox.ENV_ALLOW_UNISOLATED, raising=False)
    ctx = ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)
    with pytest.raises(ToolError) as exc:
        await default_registry.get("python")(ctx, {"code": "print('ran')"})
    assert "TROUPE_PYTHON_ALLOW_UNISOLATED=1" in exc.value.message
    assert "TROUPE_PYTHON_NAMESPACES=0" in exc.value.message  # why there is no sandbox


async def test_unisolated_opt_in_runs_and_warns_every_time(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TROUPE_PYTHON_NAMESPACES", "0")
    monkeypatch.setenv(sandbox.ENV_ALLOW_UNISOLATED, "1")
    ctx = ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)
    with caplog.at_level(logging.WARNING, logger="tools.builtin.python_exec"):
        for _ in range(2):
            assert await default_registry.get("python")(ctx, {"code": "print('ran')"}) == "ran\n"
    warnings = [r for r in caplog.records if "WITHOUT namespace isolation" in r.getMessage()]
    assert len(warnings) == 2


def test_hiding_the_root_folder_is_refused(monkeypatch):
    monkeypatch.setenv(sandbox.ENV_HIDE_PATHS, "/")
    with pytest.raises(ToolError, match="TROUPE_PYTHON_HIDE_PATHS"):
        sandbox.hidden_paths()
    monkeypatch.setenv(sandbox.ENV_HIDE_PATHS, "relative/dir")
    with pytest.raises(ToolError, match="is relative"):
        sandbox.hidden_paths()


def test_hidden_paths_keep_only_the_outermost(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setenv("TROUPE_HOME", "state")  # relative: to the cwd, as Settings reads it
    monkeypatch.setenv(sandbox.ENV_HIDE_PATHS, f"{tmp_path}/a/b, /srv/secrets")
    assert sandbox.hidden_paths([tmp_path / "x"]) == sorted([str(tmp_path.parent), "/srv/secrets"])
    monkeypatch.chdir("/usr")  # a system folder is never hidden by default
    monkeypatch.setenv("HOME", "/")
    monkeypatch.delenv(sandbox.ENV_HIDE_PATHS)
    assert sandbox.hidden_paths() == ["/usr/state"]


async def test_the_service_working_directory_is_hidden(tmp_path, monkeypatch, namespaces):
    """An `.env` file in the service's working directory stays out of view."""
    service_dir = Path(tempfile.mkdtemp(prefix=".sandbox-test-", dir=visible_base()))  # outside /tmp and HOME
    try:
        (service_dir / ".env").write_text("TROUPE_DATABASE_URL=postgresql://u:hunter2@db/troupe")
        open_to_all(service_dir)  # only the cover stands in the way
        monkeypatch.chdir(service_dir)
        ctx = ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)
        code = f"import os; print(os.listdir({str(service_dir)!r}), os.path.exists({str(service_dir / '.env')!r}))"
        assert await default_registry.get("python")(ctx, {"code": code}) == "[] False\n"
    finally:
        shutil.rmtree(service_dir, ignore_errors=True)
