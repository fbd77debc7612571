"""The app builder end to end on real Ray Serve (troupe/templates/build_web_api.yaml), the
model being the scripted OpenAI-compatible server: it picks the template the planner shows it,
writes a contract, a tiny FastAPI app with a deliberate bug, and its tests. The tests run in
the python sandbox and catch the bug; the correction is routed to the node that owns the
failing file with its file, line and error (no model asked where); the fixed app passes; the
user rejects it with feedback, which the planner corrects from; the user approves; only then is
anything published, and the published zip's tests pass again in a fresh sandbox."""

import asyncio
import json

import pytest

from tests.test_agents_e2e import call, events, schema
from tests.test_crash import wait_for
from tests.test_e2e import wait_status
from tools.builtin.app_tests import run_bundle_tests
from tools.registry import ToolContext

pytestmark = pytest.mark.ray

GOAL = "Create a REST API that stores short notes: add a note and fetch one by id"

CONTRACT = """\
openapi: 3.1.0
info: {title: Notes API, version: 1.0.0, description: Store short notes and fetch them by id.}
paths:
  /notes:
    post:
      operationId: create_note
      summary: Store a note
      requestBody:
        required: true
        content: {application/json: {schema: {$ref: '#/components/schemas/NoteIn'}}}
      responses:
        '201': {description: Created, content: {application/json: {schema: {$ref: '#/components/schemas/Note'}}}}
        '422': {description: Invalid note}
  /notes/{note_id}:
    get:
      operationId: get_note
      summary: Fetch a note by id
      parameters: [{name: note_id, in: path, required: true, schema: {type: integer}}]
      responses:
        '200': {description: The note, content: {application/json: {schema: {$ref: '#/components/schemas/Note'}}}}
        '404': {description: No such note}
components:
  schemas:
    NoteIn: {type: object, required: [text], properties: {text: {type: string}}}
    Note: {type: object, required: [id, text], properties: {id: {type: integer}, text: {type: string}}}
"""

FIXED = '''\
"""Notes API: store short notes in memory and fetch them by id."""

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI(title="Notes API", version="1.0.0")


class NoteIn(BaseModel):
    """A note as the client sends it."""

    text: str


class Note(NoteIn):
    """A stored note."""

    id: int


NOTES: dict[int, dict[str, str]] = {}


@app.post("/notes", status_code=201)
def create_note(note: NoteIn) -> Note:
    """Store a note and return it with its id."""
    note_id = len(NOTES) + 1
    NOTES[note_id] = {"text": note.text}
    return Note(id=note_id, text=note.text)


@app.get("/notes/{note_id}")
def get_note(note_id: int) -> Note:
    """One note by id; 404 when there is none."""
    if note_id not in NOTES:
        raise HTTPException(status_code=404, detail="note not found")
    return Note(id=note_id, text=NOTES[note_id]["text"])
'''
BUGGY = FIXED.replace('NOTES[note_id]["text"])', 'NOTES[note_id]["txt"])')
BUG_LINE = BUGGY.splitlines().index('    return Note(id=note_id, text=NOTES[note_id]["txt"])') + 1

TESTS = '''\
from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)


def test_create_and_fetch_a_note():
    created = client.post("/notes", json={"text": "buy milk"})
    assert created.status_code == 201
    note_id = created.json()["id"]
    assert client.get(f"/notes/{note_id}").json() == {"id": note_id, "text": "buy milk"}


def test_a_missing_note_is_404():
    assert client.get("/notes/999").status_code == 404


def test_a_note_needs_text():
    assert client.post("/notes", json={}).status_code == 422
'''

DOCUMENTED = '''"""Tests of the Notes API against its contract."""

''' + TESTS
FEEDBACK = "Not yet: give the tests module a docstring"
REDO_TESTS = {"diagnosis": "the user wants a module docstring in the tests", "nodes": [
    {"id": "tests", "kind": "agent", "tools": ["files"], "owns": ["project/tests/*"], "deps": ["contract_check"],
     "instructions": "Add a module docstring to project/tests/test_api.py and keep its tests as they are."}]}


def asked_again(client, tid):
    """The task once it has ended, or asks for approval of the second correction round."""
    body = client.get(f"/v1/tasks/{tid}").json()
    asking = body["status"] == "waiting_for_input" and "after 2 correction(s)" in (body["reason"] or "")
    return body if asking or body["status"] in ("done", "failed") else None


def turn_of(path, first=True, text=""):
    """An agent turn of the node whose instructions name `path` (and `text`): its first turn, or
    the one after its tool call came back."""
    def match(body):
        if not body.get("tools"):
            return False
        instructions = json.dumps(body["messages"][1])
        after_call = body["messages"][-1].get("role") == "tool"
        return path in instructions and text in instructions and after_call != first
    return match


def pick_shown_template(body):
    """The model's plan: the built-in template the planner showed it, as it is."""
    prompt = body["messages"][1]["content"]
    head = "The built-in plan template 'build_web_api' fits this goal"
    assert head in prompt, "the planner did not show the app-builder template"
    shown, _ = json.JSONDecoder().raw_decode(prompt[prompt.index("{", prompt.index(head)):])
    return {"pinned_requirements": [], "nodes": shown["plan"]["nodes"],
            "acceptance_tests": shown["acceptance_tests"]}


def write(path, content):
    return [call("files", action="write", path=path, content=content)]


def test_a_web_api_from_one_sentence_is_tested_corrected_approved_and_bundled(llm_app, scripted_llm, tmp_path):
    fix = f"project/app/main.py:{BUG_LINE}: KeyError: 'txt'"
    scripted_llm.add(pick_shown_template, when=schema("PlanDraft"))
    scripted_llm.add(write("project/openapi.yaml", CONTRACT), when=turn_of("project/openapi.yaml"))
    scripted_llm.add("POST /notes, GET /notes/{note_id}", when=turn_of("project/openapi.yaml", first=False))
    # The correction round's turns come first: earlier scripts win, and its instructions say more.
    scripted_llm.add(write("project/app/main.py", FIXED), when=turn_of("project/app/main.py", text=fix))
    scripted_llm.add("fixed the key", when=turn_of("project/app/main.py", first=False, text=fix))
    scripted_llm.add(write("project/app/main.py", BUGGY), when=turn_of("project/app/main.py"))
    scripted_llm.add("wrote app/main.py", when=turn_of("project/app/main.py", first=False))
    scripted_llm.add(write("project/tests/test_api.py", TESTS), when=turn_of("project/tests/test_api.py"))
    scripted_llm.add("3 tests", when=turn_of("project/tests/test_api.py", first=False))

    with llm_app.client() as client:
        r = client.post("/v1/tasks", json={"goal": GOAL})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        body = wait_status(client, tid, statuses=("waiting_for_input", "done", "failed"), timeout_s=300)
        assert body["status"] == "waiting_for_input", body["reason"]
        assert body["waiting_on"] == "approval", [v for v in body["verdicts"] if not v["passed"]]
        asked = body["reason"]
        assert client.get(f"/v1/tasks/{tid}/artifacts").json() == []  # nothing published before the approval
        # rejected with feedback: the planner corrects from it (no file to route to), then it is asked again
        scripted_llm.add(REDO_TESTS, when=schema("CorrectionDraft"))
        scripted_llm.add(write("project/tests/test_api.py", DOCUMENTED), when=turn_of("module docstring"))
        scripted_llm.add("added the docstring", when=turn_of("module docstring", first=False))
        assert client.post(f"/v1/tasks/{tid}/messages", json={"text": FEEDBACK}).status_code == 202
        body = wait_for(lambda: asked_again(client, tid), 300, "the second approval request")
        assert body["status"] == "waiting_for_input" and body["waiting_on"] == "approval", body["reason"]
        assert client.post(f"/v1/tasks/{tid}/messages", json={"text": "approve"}).status_code == 202
        body = wait_status(client, tid, timeout_s=120)
        assert body["status"] == "done", body["reason"]
        log = events(client, tid)
        names = {a["name"] for a in client.get(f"/v1/tasks/{tid}/artifacts").json()}
        bundle = client.get(f"/v1/tasks/{tid}/artifacts/app.zip").content

    assert body["plan_source"] == "llm" and body["corrections"] == 2
    # the failing run: the tests caught the bug, at its exact place in the app
    runs = [e["payload"]["output"] for e in log if e["type"] == "tool.result" and e["payload"].get("tool") == "run_pytest"]
    failing, passing = runs[:2]
    assert not failing["passed"] and failing["counts"]["failed"] == 1 and failing["counts"]["passed"] == 2
    [bug] = failing["failures"]
    assert (bug["file"], bug["line"], bug["error"]) == ("project/app/main.py", BUG_LINE, "KeyError: 'txt'")
    assert bug["test"] == "tests/test_api.py::test_create_and_fetch_a_note"
    # the routed correction: to the node owning the file, with file, line and error; no model asked
    corrected, from_feedback = [e["payload"] for e in log if e["type"] == "plan.corrected"]
    # the bundle's own run failed too: it is downstream of the code, so it is re-checked after the fix
    assert corrected["source"] == "routed" and corrected["failed"] == ["tests_pass", "bundle_tests_pass"]
    assert [(r["node_id"], r["file"], r["line"]) for r in corrected["routed"]] == [
        ("code", "project/app/main.py", BUG_LINE)]
    [redefined] = corrected["nodes"]
    assert redefined["id"] == "code" and fix in redefined["instructions"]
    purposes = [e["payload"]["purpose"] for e in log if e["type"] == "llm.called"]
    assert purposes.count("correct") == 1 and purposes.count("agent:code") == 4  # the one for the feedback
    # the passing run, then the review and the bundle's own run
    assert passing["passed"] and passing["counts"] == {"passed": 3, "failed": 0, "errors": 0, "skipped": 0}
    first, second = [e["payload"] for e in log if e["type"] == "verify.verdicts"][:2]
    assert {v["test_id"]: v["passed"] for v in first["verdicts"]}["tests_pass"] is False
    assert {v["test_id"]: (v["passed"], v["awaiting"]) for v in second["verdicts"]} == {
        "tests_pass": (True, None), "reviewed": (True, None), "bundle_tests_pass": (True, None),
        "approved": (False, "approval")}
    # the approval request showed the test results, the review scores and the cost
    assert "tests_pass: passed: tests passed (3 passed)" in asked
    assert "reviewed: passed: security 10/10" in asked and "cost so far: $" in asked
    first_ask, second_ask = [e["payload"]["approval"] for e in log if e["type"] == "task.status"
                             and e["payload"].get("waiting_on") == "approval"]
    assert (first_ask["round"], second_ask["round"]) == (1, 2)
    # the cost shown is the task's so far: the approval itself asks no model
    assert first_ask["cost"]["llm_calls"] < second_ask["cost"]["llm_calls"] == body["usage"]["llm_calls"]
    # the rejection: its feedback failed the approval, and the planner's correction worked from it
    rejected = [e["payload"] for e in log if e["type"] == "verify.verdicts"][2]
    assert {v["test_id"]: v["reason"] for v in rejected["verdicts"]}["approved"] == f"rejected by the user: {FEEDBACK}"
    assert from_feedback["failed"] == ["approved"] and [n["id"] for n in from_feedback["nodes"]] == ["tests"]
    [asked_to_correct] = [r for r in scripted_llm.requests if schema("CorrectionDraft")(r)]
    assert f"rejected by the user: {FEEDBACK}" in asked_to_correct["messages"][1]["content"]
    runs_after = [e["payload"]["output"] for e in log if e["type"] == "tool.result"
                  and e["payload"].get("tool") == "run_pytest"]
    assert len(runs_after) == 3 and runs_after[-1]["passed"]  # the redone tests ran again before the approval
    last = [e["payload"] for e in log if e["type"] == "verify.verdicts"][-1]
    assert last["passed"] and "approved by the user: approve" in json.dumps(last["verdicts"])
    # the bundle: source tree, tests, Dockerfile, README; its tests pass in a fresh sandbox here too
    assert {"app.zip", "project/app/main.py", "project/tests/test_api.py", "project/openapi.yaml"} <= names
    (tmp_path / "app.zip").write_bytes(bundle)
    ctx = ToolContext(task_id="t", tenant="t", node_id="n", idempotency_key="k", workspace=tmp_path)
    again = asyncio.run(run_bundle_tests(ctx, bundle="app.zip"))
    assert again["passed"] and again["counts"]["passed"] == 3
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(bundle)) as z:
        assert {"Dockerfile", "README.md", "requirements.txt", "app/main.py", "tests/test_api.py",
                "openapi.yaml"} <= set(z.namelist())
        assert 'NOTES[note_id]["text"]' in z.read("app/main.py").decode()
        assert z.read("tests/test_api.py").decode() == DOCUMENTED
        assert "POST /notes" in z.read("README.md").decode()
