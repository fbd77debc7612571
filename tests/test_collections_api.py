"""Collections over real HTTP: ingest jobs (paths and uploads) with progress as JSON and SSE,
search with sources, bad input as problems, the CLI, task attachments, and a jobs actor that
dies mid-job."""

import io
import json
import time
import uuid
import zipfile

import httpx_sse
import pytest
from typer.testing import CliRunner

from tests.conftest import _make_app
from tests.ingest.corpus import mixed_corpus, planted_corpus, small_config, write_doc
from tests.test_e2e import wait_status
from troupe.cli import app as cli

# Deploying an app and the first ingest (embedding actors start) take minutes on a busy 2-core machine.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

PROBLEM = "application/problem+json"
APP = "troupe-docs"
OK_PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}
runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("docs-data")


@pytest.fixture(scope="module")
def docs_app(serve_http, tmp_path_factory, data_root):
    app = _make_app(serve_http, tmp_path_factory, APP, "/docsapp", ingest_roots=[str(data_root)],
                    ingest_jobs={"ingest": small_config().model_dump(mode="json"), "poll_s": 1.0})
    yield app
    app.delete()  # and its ingest jobs, Supervisor and Qdrant owner


@pytest.fixture(scope="module")
def planted(data_root):
    return planted_corpus(data_root / "planted", facts=5, filler_docs=10)


def problem(r, status, field=None):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert field in {e["field"] for e in body.get("errors", [])}, body
    return body


def wait_job(client, job_id, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/ingest/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"ingest job {job_id} still {job['status']} after {timeout_s}s")


def sse_events(client, path, headers=None):
    with httpx_sse.connect_sse(client, "GET", path, headers=headers or {}, timeout=None) as source:
        assert source.response.status_code == 200
        # A keep-alive comment comes out of httpx_sse as an event without data.
        return [(e.event, e.id, json.loads(e.data)) for e in source.iter_sse() if e.data]


def test_ingest_paths_then_follow_and_search(docs_app, planted):
    corpus, facts = planted
    with docs_app.client(timeout=240) as c:
        r = c.post("/v1/collections/facts/ingest", json={"paths": [str(corpus.root)]})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert r.headers["location"] == f"/v1/ingest/{job_id}"

        events = sse_events(c, f"/v1/ingest/{job_id}/events")
        names = [name for name, _, _ in events]
        assert names[-1] == "done" and set(names[:-1]) <= {"progress"}, names
        assert [int(i) for _, i, _ in events] == sorted({int(i) for _, i, _ in events})  # ids grow
        done = [e["progress"]["files_done"] for _, _, e in events]
        assert done == sorted(done) and done[-1] == corpus.files

        job = c.get(f"/v1/ingest/{job_id}").json()
        assert job["status"] == "done" and job["attempts"] == 1
        p = job["progress"]
        assert p["files_seen"] == p["files_parsed"] == corpus.files and p["files_failed"] == 0
        assert p["chunks_embedded"] == p["chunks_stored"] == corpus.expected_chunks and p["docs_per_s"] > 0
        assert job["report"]["files"] == corpus.files and job["report"]["failures"] == []
        assert job["report"]["by_status"] == {"stored": corpus.files}
        assert "outcomes" not in job["report"]
        outcomes = c.get(f"/v1/ingest/{job_id}", params={"files": True}).json()["report"]["outcomes"]
        assert {o["source"] for o in outcomes} == {str(d.path) for d in corpus.docs}

        # The stream of an ended job replays its end, or nothing after its last id.
        assert [n for n, _, _ in sse_events(c, f"/v1/ingest/{job_id}/events")] == ["done"]
        assert sse_events(c, f"/v1/ingest/{job_id}/events", {"Last-Event-ID": events[-1][1]}) == []

        fact = facts[0]
        body = c.post("/v1/collections/facts/search", json={"query": fact.question, "limit": 5}).json()
        results = body["results"]
        assert body["collection"] == "facts" and 1 <= len(results) <= 5
        assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        hit = next(r for r in results if r["source"] == fact.path.name)
        assert fact.answer in hit["text"] and hit["location"] and hit["citation"].startswith(fact.path.name)
        assert hit["path"] == str(fact.path) and hit["scope"] == "org" and len(hit["doc_id"]) == 16

        narrowed = c.post("/v1/collections/facts/search", json={
            "query": fact.question, "filters": {"formats": [fact.path.suffix.lstrip(".")]}}).json()["results"]
        assert narrowed and all(r["source"].endswith(fact.path.suffix) for r in narrowed)

        # Idempotent: a second job over the same files stores nothing.
        again = wait_job(c, c.post("/v1/collections/facts/ingest", json={"paths": [str(corpus.root)]}).json()["job_id"])
        assert again["report"]["by_status"] == {"unchanged": corpus.files} and again["report"]["chunks_stored"] == 0


def test_upload_an_archive(docs_app, tmp_path):
    docs = tmp_path / "upload"
    write_doc(docs / "notes" / "ops.md", [("Ops Review", "The Quillon depot moved 4242 crates of tiles in March. "
                                                        "The night shift counted them twice.")])
    write_doc(docs / "memo.txt", [("Memo", "Nothing to report this week. All lines ran as planned.")])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(docs.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(docs).as_posix())
    with docs_app.client(timeout=240) as c:
        r = c.post("/v1/collections/uploads/ingest", files=[("files", ("batch.zip", buf.getvalue())),
                                                            ("files", ("loose.txt", b"Loose\n\nThe loose page."))])
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "done" and job["report"]["files"] == 3 and not job["report"]["failures"]
        assert not list((docs_app.home / "uploads" / "default").rglob("*.md"))  # cleaned up once ended
        question = {"query": "How many crates did the Quillon depot move?"}
        results = c.post("/v1/collections/uploads/search", json=question).json()["results"]
        assert results[0]["source"] == "ops.md" and results[0]["path"] == "batch/notes/ops.md"
        assert "4242" in results[0]["text"]

        # Uploading a revised file replaces its old version, as re-ingesting a changed path does.
        write_doc(docs / "notes" / "ops.md", [("Ops Review", "The Quillon depot moved 5151 crates of tiles in "
                                                            "March. The night shift counted them twice.")])
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in sorted(docs.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(docs).as_posix())
        r = c.post("/v1/collections/uploads/ingest", files=[("files", ("batch.zip", buf.getvalue()))])
        job = wait_job(c, r.json()["job_id"])
        assert job["report"]["by_status"] == {"stored": 1, "unchanged": 1} and job["report"]["chunks_deleted"] == 1
        texts = [r["text"] for r in c.post("/v1/collections/uploads/search", json=question).json()["results"]]
        assert "5151" in texts[0] and not any("4242" in t for t in texts)


def test_bad_input_is_a_clear_problem(docs_app, data_root, planted):
    corpus, _ = planted
    with docs_app.client(timeout=240) as c:
        ingest = "/v1/collections/facts/ingest"
        problem(c.post("/v1/collections/-bad/ingest", json={"paths": [str(corpus.root)]}), 422, "name")
        problem(c.post(f"/v1/collections/{'x' * 65}/search", json={"query": "q"}), 422, "name")
        body = problem(c.post(ingest, json={"paths": ["/etc/passwd"]}), 403, "paths.0")
        assert "TROUPE_INGEST_ROOTS" in body["detail"] and str(data_root) in body["detail"]
        assert "own state" in problem(c.post(ingest, json={"paths": [str(docs_app.home / "troupe.db")]}), 403,
                                      "paths.0")["detail"]
        problem(c.post(ingest, json={"paths": [str(corpus.root), "relative/dir"]}), 422, "paths.1")
        problem(c.post(ingest, json={"paths": [str(data_root / "missing")]}), 422, "paths.0")
        problem(c.post(ingest, json={"paths": []}), 422, "paths")
        problem(c.post(ingest, json={}), 422, "paths")
        problem(c.post(ingest, json={"paths": [str(corpus.root)], "colour": "red"}), 422, "colour")
        problem(c.post(ingest, json={"paths": [str(corpus.root)], "config": {"overlap": 5000}}), 422, "config")
        problem(c.post(ingest, content=b'{"paths": [', headers={"content-type": "application/json"}), 400)

        problem(c.post(ingest, files=[("options", (None, "{}"))]), 422, "files")
        problem(c.post(ingest, files=[("files", ("a.zip", b"garbage"))]), 422, "files")
        evil = io.BytesIO()
        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr("../../escape.txt", "x")
        assert "leads outside" in problem(c.post(ingest, files=[("files", ("evil.zip", evil.getvalue()))]), 422,
                                          "files")["detail"]
        problem(c.post(ingest, files=[("files", ("a.txt", b"x"))], data={"options": "{bad"}), 400)
        problem(c.post(ingest, files=[("files", ("a.txt", b"x"))], data={"options": '{"config": {"overlap": -1}}'}),
                422, "options.config.overlap")
        assert not list((docs_app.home / "uploads" / "default" / ".staging").glob("*"))  # nothing left behind

        search = "/v1/collections/facts/search"
        problem(c.post(search, json={"query": "   "}), 422, "query")
        problem(c.post(search, json={"query": "q", "limit": 0}), 422, "limit")
        problem(c.post(search, json={"query": "q", "filters": {"pages": 3}}), 422, "filters.pages")
        problem(c.post(search, json={"query": "q", "task_id": "../x"}), 422, "task_id")
        assert "POST /v1/collections/nothing-here/ingest" in problem(
            c.post("/v1/collections/nothing-here/search", json={"query": "q"}), 404)["detail"]

        problem(c.get("/v1/ingest/nope"), 404)
        problem(c.get("/v1/ingest/nope/events"), 404)
        acme = {"X-Troupe-Tenant": "acme"}
        job_id = c.post(ingest, json={"paths": [str(corpus.root)]}, headers=acme).json()["job_id"]
        problem(c.get(f"/v1/ingest/{job_id}"), 404)  # another tenant's job
        problem(c.get(f"/v1/ingest/{job_id}/events", headers={"X-Troupe-Tenant": "acme", "Last-Event-ID": "x"}), 400)
        wait_job(docs_app.client(headers=acme), job_id)
        problem(c.post("/v1/collections/facts/search", json={"query": "q"}, headers={"X-Troupe-Tenant": "a/b"}), 422)


def test_uploads_have_their_own_body_limit(docs_app):
    with docs_app.client(timeout=240) as c:
        two_mb = b"x" * 2_000_000
        # Over max_body_bytes (1 MiB) as JSON, but a multipart upload may be larger.
        problem(c.post("/v1/collections/facts/ingest", content=b'{"paths": ["' + two_mb + b'"]}',
                       headers={"content-type": "application/json"}), 413)
        r = c.post("/v1/collections/big/ingest", files=[("files", ("small.txt", b"Small\n\nA small page.")),
                                                        ("files", ("blob.bin", two_mb))])
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["report"]["by_status"] == {"stored": 1, "failed": 1}
        assert "unsupported file type" in job["report"]["failures"][0]["reason"]
        assert job["report"]["failures"][0]["source"] == "blob.bin"


def test_cli_ingest_and_search(docs_app, data_root, monkeypatch):
    folder = data_root / "cli"
    write_doc(folder / "harbour.txt", [("Harbour Log", "The Brambling ferry carried 777 passengers on Sunday. "
                                                      "The crossing took ninety minutes.")])
    write_doc(folder / "sub" / "plant.md", [("Plant", "The Selkirk plant shipped 31 turbines to the coast. "
                                                     "Most went by rail.")])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    url = ["--url", docs_app.base_url]
    monkeypatch.setenv("TROUPE_HOME", str(docs_app.home))  # the CLI finds the local admin key there
    result = runner.invoke(cli, ["ingest", str(folder), "--collection", "cli", *url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ingest job" in out and "done" in out and "chunks stored" in out and "docs/s" in out
    assert "1 files failed" in out and "broken.pdf" in out

    uploaded = runner.invoke(cli, ["ingest", str(folder / "sub"), "--collection", "cli-up", "--upload", *url],
                             env={"COLUMNS": "200"})
    assert uploaded.exit_code == 0, uploaded.output
    assert "failed" not in uploaded.output

    found = runner.invoke(cli, ["search", "How many passengers did the ferry carry?", "--collection", "cli",
                                "--limit", "2", *url], env={"COLUMNS": "200"})
    assert found.exit_code == 0, found.output
    assert "harbour.txt" in found.output and "777" in found.output
    found = runner.invoke(cli, ["search", "turbines shipped", "-c", "cli-up", *url], env={"COLUMNS": "200"})
    assert found.exit_code == 0 and "plant.md" in found.output, found.output

    missing = runner.invoke(cli, ["search", "anything", "--collection", "nope", *url])
    assert missing.exit_code == 2 and "404" in missing.output and "ingest" in missing.output
    outside = runner.invoke(cli, ["ingest", "/etc", "--no-upload", "--collection", "cli", *url])
    assert outside.exit_code == 2 and "403" in outside.output and "TROUPE_INGEST_ROOTS" in outside.output


def test_multipart_task_copies_attachments_before_it_exists(docs_app, data_root):
    server_file = write_doc(data_root / "attach" / "brief.md", [("Brief", "The Orkney office opened in May.")])
    with docs_app.client(timeout=240) as c:
        task = {"goal": "read my files", "plan": OK_PLAN, "attachments": [str(server_file)]}
        r = c.post("/v1/tasks", data={"task": json.dumps(task)},
                   files=[("files", ("notes.txt", b"Notes\n\nThe Orkney office has 12 staff.")),
                          ("files", ("../../sneaky.txt", b"Sneaky\n\nA name that tries to leave."))])
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        workspace = docs_app.home / "workspaces" / "default" / task_id
        expected = ["attachments/notes.txt", "attachments/sneaky.txt", "attachments/brief.md"]
        assert sorted(p.relative_to(workspace).as_posix() for p in (workspace / "attachments").iterdir()) == \
            sorted(expected)
        submitted = c.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()[0]
        assert submitted["type"] == "task.submitted" and submitted["payload"]["attachments"] == expected
        assert c.get(f"/v1/tasks/{task_id}").json()["attachments"] == expected

        # The JSON route takes server paths too, under the same roots.
        r = c.post("/v1/tasks", json={"goal": "g", "plan": OK_PLAN, "attachments": [str(server_file.parent)]})
        assert r.status_code == 202, r.text
        tasks_before = len(c.get("/v1/tasks", params={"limit": 500}).json()["items"])
        problem(c.post("/v1/tasks", json={"goal": "g", "attachments": ["/etc/passwd"]}), 403, "attachments.0")
        problem(c.post("/v1/tasks", data={"task": json.dumps({"goal": "g", "attachments": ["/etc"]})},
                       files=[("files", ("a.txt", b"x"))]), 403, "attachments.0")
        problem(c.post("/v1/tasks", data={"nottask": "{}"}, files=[("files", ("a.txt", b"x"))]), 422, "task")
        problem(c.post("/v1/tasks", data={"task": "{oops"}, files=[("files", ("a.txt", b"x"))]), 400)
        problem(c.post("/v1/tasks", data={"task": json.dumps({"goal": 3})}, files=[("files", ("a.txt", b"x"))]),
                422, "task.goal")
        assert len(c.get("/v1/tasks", params={"limit": 500}).json()["items"]) == tasks_before  # none created

        # The runner ingests the attachments before planning, then runs the plan.
        done = wait_status(c, task_id, timeout_s=300)
        assert done["status"] == "done", done.get("reason")
        events = c.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()
        [ingested] = [e for e in events if e["type"] == "attachments.ingested"]
        assert ingested["payload"]["summary"]["files"] == 3


def test_ingest_attachments_through_the_tool_pool(docs_app):
    from ray import serve

    from troupe.tool_calls import ToolCall

    task_id = f"t-{uuid.uuid4().hex[:8]}"
    workspace = docs_app.home / "workspaces" / "default" / task_id
    pool = serve.get_deployment_handle("ToolPool", app_name=APP)

    calls = iter(range(1, 100))

    def call() -> dict:
        # Each call its own key: the pool's call ledger returns a key's kept outcome instead of running again.
        outcome = pool.call.remote(ToolCall(tool="ingest_attachments", args={}, task_id=task_id, tenant="default",
                                            node_id="_attachments",
                                            idempotency_key=f"{task_id}:{next(calls)}")).result()
        assert outcome.ok, outcome.error
        return outcome.output

    assert call()["files"] == 0  # nothing attached: nothing to do
    write_doc(workspace / "attachments" / "contract.docx", [("Terms", "The Larkspur contract ends in 2031. "
                                                                      "Either party may renew it.")])
    (workspace / "attachments" / "scan.pdf").write_bytes(b"not a pdf")
    first = call()
    assert first["collection"] == "attachments" and first["scope"] == f"task:{task_id}"
    assert first["files"] == 2 and first["stored"] == 1 and first["chunks"] >= 1 and first["failed"] == 1
    assert first["failures"][0]["file"] == "attachments/scan.pdf" and first["failures"][0]["reason"]
    [doc] = first["documents"]
    assert doc["file"] == "attachments/contract.docx" and doc["status"] == "stored" and len(doc["doc_id"]) == 16
    again = call()
    assert again["stored"] == 0 and again["chunks"] == 0 and again["unchanged"] >= 1

    with docs_app.client(timeout=240) as c:
        query = {"query": "When does the Larkspur contract end?"}
        mine = c.post("/v1/collections/attachments/search", json=query | {"task_id": task_id}).json()["results"]
        assert mine[0]["source"] == "contract.docx" and mine[0]["scope"] == f"task:{task_id}"
        others = c.post("/v1/collections/attachments/search", json=query | {"task_id": "t-other"}).json()["results"]
        assert all(r["scope"] != f"task:{task_id}" for r in others)


def test_a_job_survives_its_actor_dying(docs_app, data_root):
    import ray

    from memory.semantic import QdrantSettings, Scope, SemanticStore

    corpus = mixed_corpus(data_root / "durable", 60, corrupt=2, duplicates=4)
    with docs_app.client(timeout=240) as c:
        job_id = c.post("/v1/collections/durable/ingest", json={"paths": [str(corpus.root)]}).json()["job_id"]
        deadline = time.monotonic() + 120
        while c.get(f"/v1/ingest/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ray.kill(ray.get_actor(f"{APP}-ingest-jobs", namespace="troupe"), no_restart=False)  # it restarts
        job = wait_job(c, job_id)
    assert job["status"] == "done" and job["attempts"] == 2, job
    assert job["report"]["files"] == corpus.files
    assert {f["source"] for f in job["report"]["failures"]} == {str(p) for p in corpus.corrupt}
    assert all(f["reason"] for f in job["report"]["failures"])
    store = SemanticStore(QdrantSettings.for_app(docs_app.home))
    stored = store.count_sync(tenant="default", collection="durable", scope=Scope.org())
    assert stored == corpus.expected_chunks
