"""The app builder's tools against real files and the real sandbox: pytest inside it, the
review (bandit and our OWASP-style checks), the contract check and the bundle."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tools.builtin.code_review import review_project
from tools.registry import ToolContext, ToolError, default_registry

APP = '''\
"""Items API."""

from fastapi import FastAPI, HTTPException

app = FastAPI(title="Items")
ITEMS = {1: {"name": "pen"}}


@app.get("/items/{item_id}")
def get_item(item_id: int) -> dict:
    """One item by id."""
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    return {"id": item_id, "name": ITEMS[item_id]["name"]}
'''
TESTS = '''\
from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)


def test_get_item():
    assert client.get("/items/1").json() == {"id": 1, "name": "pen"}


def test_missing_item():
    assert client.get("/items/9").status_code == 404
'''
CONTRACT = """\
openapi: 3.1.0
info: {title: Items, version: "1"}
paths:
  /items/{item_id}:
    get:
      operationId: get_item
      summary: One item
      responses: {'200': {description: OK, content: {application/json: {schema: {$ref: '#/components/schemas/Item'}}}}}
components: {schemas: {Item: {type: object}}}
"""


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)


def project(ctx: ToolContext, app: str = APP, tests: str = TESTS) -> Path:
    root = ctx.workspace / "project"
    (root / "app").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "main.py").write_text(app)
    (root / "tests" / "test_api.py").write_text(tests)
    (root / "openapi.yaml").write_text(CONTRACT)
    return root


async def call(ctx: ToolContext, tool_name: str, **args):
    return await default_registry.get(tool_name)(ctx, args)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


async def test_passing_tests_are_counted(ctx):
    project(ctx)
    out = await call(ctx, "run_pytest", path="project")
    assert out["passed"] and out["counts"] == {"passed": 2, "failed": 0, "errors": 0, "skipped": 0}
    assert out["failures"] == [] and out["summary"] == "2 passed"


async def test_a_bug_in_the_app_is_reported_at_its_file_and_line(ctx):
    buggy = APP.replace('ITEMS[item_id]["name"]', 'ITEMS[item_id]["nme"]')
    project(ctx, app=buggy)
    out = await call(ctx, "run_pytest", path="project")
    assert not out["passed"] and out["counts"]["failed"] == 1 and out["counts"]["passed"] == 1
    [f] = out["failures"]
    assert (f["file"], f["line"], f["error"]) == ("project/app/main.py", line_of(buggy, '"nme"'), "KeyError: 'nme'")
    assert f["test"] == "tests/test_api.py::test_get_item"
    assert {"file": "project/tests/test_api.py", "line": line_of(TESTS, "/items/1")} in f["frames"]


async def test_a_failed_assertion_is_reported_in_the_test(ctx):
    project(ctx, app=APP.replace('"name": ITEMS', '"title": ITEMS'))
    out = await call(ctx, "run_pytest", path="project")
    [f] = out["failures"]
    assert f["file"] == "project/tests/test_api.py" and f["line"] == line_of(TESTS, "/items/1")
    assert f["error"].startswith("AssertionError")


async def test_code_that_does_not_import_is_a_collection_error(ctx):
    project(ctx, app=APP.replace("def get_item(item_id: int) -> dict:", "def get_item(item_id: int) -> dict"))
    out = await call(ctx, "run_pytest", path="project")
    assert not out["passed"] and out["counts"]["errors"] == 1
    [f] = out["failures"]
    assert f["file"] == "project/app/main.py" and "SyntaxError" in f["error"]


async def test_the_tests_run_without_network(ctx):
    spy = TESTS + '''

def test_no_network():
    import socket
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1)
    except OSError:
        return
    raise AssertionError("connected")
'''
    project(ctx, tests=spy)
    out = await call(ctx, "run_pytest", path="project")
    assert out["passed"] and out["counts"]["passed"] == 3


async def test_bad_input_says_what_to_do(ctx):
    with pytest.raises(ToolError, match="no folder 'nowhere'.*write the project there first"):
        await call(ctx, "run_pytest", path="nowhere")
    with pytest.raises(ToolError, match="absolute"):
        await call(ctx, "run_pytest", path="/etc")
    (ctx.workspace / "empty").mkdir()
    with pytest.raises(ToolError, match="holds no files"):
        await call(ctx, "run_pytest", path="empty")
    with pytest.raises(ToolError, match="no bundle 'app.zip'.*bundle_app"):
        await call(ctx, "run_bundle_tests", bundle="app.zip")
    (ctx.workspace / "fake.zip").write_text("not a zip")
    with pytest.raises(ToolError, match="not a zip file"):
        await call(ctx, "run_bundle_tests", bundle="fake.zip")
    with pytest.raises(ToolError, match="must end with .zip"):
        await call(ctx, "bundle_app", name="app.tar")


async def test_the_bundle_is_complete_deterministic_and_its_tests_pass_fresh(ctx):
    project(ctx)
    first = await call(ctx, "bundle_app", path="project", name="app.zip")
    assert set(first["added"]) == {"requirements.txt", "pytest.ini", "Dockerfile", "README.md"}
    data = (ctx.workspace / "app.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = set(z.namelist())
        requirements = z.read("requirements.txt").decode().split()
        docker = z.read("Dockerfile").decode()
        readme = z.read("README.md").decode()
    assert {"app/main.py", "app/__init__.py", "tests/test_api.py", "openapi.yaml", "Dockerfile", "README.md",
            "requirements.txt", "pytest.ini"} == names
    assert {r.split("==")[0] for r in requirements} == {"fastapi", "uvicorn", "pytest", "httpx"}
    assert 'CMD ["uvicorn", "app.main:app"' in docker and "USER api" in docker
    assert "`GET /items/{item_id}`: One item" in readme
    again = await call(ctx, "bundle_app", path="project", name="app.zip")
    assert again["added"] == [] and again["sha256"] == first["sha256"]  # a re-run writes the same bytes
    out = await call(ctx, "run_bundle_tests", bundle="app.zip")
    assert out["passed"] and out["counts"]["passed"] == 2 and out["bundle"] == "app.zip"


async def test_a_bundle_with_a_bug_fails_its_fresh_run(ctx):
    project(ctx, app=APP.replace('ITEMS[item_id]["name"]', 'ITEMS[item_id]["nme"]'))
    await call(ctx, "bundle_app", path="project", name="app.zip")
    out = await call(ctx, "run_bundle_tests", bundle="app.zip")
    assert not out["passed"] and out["failures"][0]["file"] == "app.zip:app/main.py"


async def test_the_contract_check_lists_operations_and_every_problem(ctx):
    project(ctx)
    out = await call(ctx, "openapi_check", path="project/openapi.yaml")
    assert out["title"] == "Items" and [(o["method"], o["path"]) for o in out["operations"]] == [
        ("GET", "/items/{item_id}")]
    assert out["summary"] == "GET /items/{item_id} (get_item): One item -> 200"
    (ctx.workspace / "bad.yaml").write_text(
        "openapi: 2.0\ninfo: {title: X}\npaths:\n  items:\n    get: {responses: {'200': {$ref: '#/nope'}}}\n")
    with pytest.raises(ToolError) as err:
        await call(ctx, "openapi_check", path="bad.yaml")
    for problem in ("3.x version", "`info` needs a `title` and a `version`", "path 'items' must start with '/'",
                    "GET items needs an `operationId`", "unresolvable $ref: #/nope"):
        assert problem in str(err.value)
    (ctx.workspace / "worse.yaml").write_text("a: [")
    with pytest.raises(ToolError, match="not valid YAML"):
        await call(ctx, "openapi_check", path="worse.yaml")
    with pytest.raises(ToolError, match="no contract 'missing.yaml'"):
        await call(ctx, "openapi_check", path="missing.yaml")


def test_review_scores_a_clean_project_high(ctx):
    project(ctx)
    out = review_project(ctx.workspace.resolve(), (ctx.workspace / "project").resolve())
    assert out["security"] == {"score": 10, "findings": []}
    assert out["quality"]["score"] >= 9 and out["tests"] == 2 and out["bandit"][0].isdigit()


def test_review_finds_owasp_problems_and_bandit_issues_with_their_lines(ctx):
    risky = APP + '''

import subprocess
from fastapi.middleware.cors import CORSMiddleware

API_TOKEN = "s3cr3t-t0ken-value"
app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True)


@app.post("/run")
def run(body: dict) -> dict:
    """Run a command."""
    subprocess.run(body["cmd"], shell=True)
    return {"result": eval(body["expr"])}


def lookup(db, name):
    try:
        return db.execute(f"SELECT * FROM users WHERE name = '{name}'")
    except:
        return None
'''
    project(ctx, app=risky)
    out = review_project(ctx.workspace.resolve(), (ctx.workspace / "project").resolve())
    found = {(f["rule"], f["line"]) for f in out["security"]["findings"]}
    assert ("A07-hardcoded-secret", line_of(risky, "API_TOKEN")) in found
    assert ("A05-cors", line_of(risky, "add_middleware")) in found
    assert ("A04-unvalidated-input", line_of(risky, "def run(")) in found
    assert ("A03-injection", line_of(risky, "eval(")) in found
    assert ("A03-sql-injection", line_of(risky, "db.execute")) in found
    assert ("bandit-B602", line_of(risky, "shell=True")) in found  # subprocess with shell=True
    assert all(f["file"] == "project/app/main.py" for f in out["security"]["findings"])
    assert out["security"]["score"] == 0
    quality = {(f["rule"], f["line"]) for f in out["quality"]["findings"]}
    assert ("Q-bare-except", line_of(risky, "except:")) in quality
    assert ("Q-untyped", line_of(risky, "def lookup(")) in quality


def test_review_of_a_project_without_tests_or_python_says_so(ctx):
    (ctx.workspace / "p").mkdir()
    with pytest.raises(ToolError, match="no Python files"):
        review_project(ctx.workspace.resolve(), (ctx.workspace / "p").resolve())
    (ctx.workspace / "p" / "main.py").write_text('"""x."""\n')
    out = review_project(ctx.workspace.resolve(), (ctx.workspace / "p").resolve())
    assert ("Q-no-tests", "high") in {(f["rule"], f["severity"]) for f in out["quality"]["findings"]}
