"""The console's sign-in, session cookie, CSRF defence and forms, without Ray: a real store
behind the real API (tests/support/local_backend.py). The browser tests are tests/web/test_console.py."""

import re
import time

import pytest

from deployments.api import GatewayConfig
from deployments.auth import CSRF_HEADER, SESSION_COOKIE
from memory.access import Role
from memory.store import NewEvent
from tests.support.local_backend import LocalBackend, local_client
from troupe.models import EventType

PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}


@pytest.fixture
def console(tmp_path):
    backend = LocalBackend(tmp_path, GatewayConfig())
    _, client = local_client(backend)
    with client:
        yield client, backend


def _sign_in(client, key: str) -> str:
    """Sign in; the session's CSRF token, read from the page as the browser would."""
    r = client.post("/console/signin", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/tasks", r.text
    page = client.get("/console/tasks")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def test_sign_in_sets_an_httponly_strict_cookie_that_holds_no_key(console):
    client, backend = console
    r = client.post("/console/signin", data={"key": backend.admin_key}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http here; https sets it
    assert backend.admin_key not in cookie and backend.admin_key[4:20] not in cookie
    https = client.post("/console/signin", data={"key": backend.admin_key}, follow_redirects=False,
                        headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in https.headers["set-cookie"]


def test_wrong_key_is_a_clear_error_on_the_page(console):
    client, _ = console
    r = client.post("/console/signin", data={"key": "trp_not-a-key"})
    assert r.status_code == 401 and "not valid" in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert client.get("/", follow_redirects=False).headers["location"] == "/console/signin"
    assert client.get("/console/tasks", follow_redirects=False).headers["location"] == "/console/signin"


def test_session_calls_the_api_and_state_changes_need_the_csrf_token(console):
    client, backend = console
    csrf = _sign_in(client, backend.admin_key)
    assert client.get("/v1/tasks").status_code == 200  # the cookie is the credential
    assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}).status_code == 403
    assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN},
                       headers={CSRF_HEADER: "forged"}).status_code == 403
    other_site = {CSRF_HEADER: csrf, "Origin": "https://evil.example"}
    assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=other_site).status_code == 403
    ok = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN},
                     headers={CSRF_HEADER: csrf, "Origin": "http://testserver"})
    assert ok.status_code == 202, ok.text
    # Bearer keys work exactly as before, with no CSRF token.
    bearer = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN},
                         headers={"Authorization": f"Bearer {backend.admin_key}"}, cookies={})
    assert bearer.status_code == 202


def test_revoking_the_key_ends_its_session_within_a_second(console):
    client, backend = console
    secret = client.portal.call(backend.key, "acme", Role.member)
    _sign_in(client, secret)
    key = client.portal.call(backend.access.find_by_secret, secret)
    client.portal.call(backend.access.revoke, key.key_id)
    time.sleep(backend.auth.cache_ttl_s + 0.1)  # the lookup cache's lifetime, not a timing assertion
    r = client.get("/v1/tasks")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.get("/console/tasks", follow_redirects=False).headers["location"] == "/console/signin"


def test_sign_out_ends_the_session_on_the_server(console):
    client, backend = console
    csrf = _sign_in(client, backend.admin_key)
    session_id = client.cookies[SESSION_COOKIE]
    assert client.post("/console/signout", data={"csrf": "forged"}).status_code == 403
    r = client.post("/console/signout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/signin"
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, session_id)  # the old cookie, replayed
    r = client.get("/v1/tasks")
    assert r.status_code == 401 and "session ended" in r.json()["detail"]


def test_new_task_form_shows_plan_errors_on_the_node_and_submits(console):
    client, backend = console
    csrf = _sign_in(client, backend.admin_key)
    bad_yaml = client.post("/console/new", data={"csrf": csrf, "goal": "g", "plan": "nodes: [\n"})
    assert bad_yaml.status_code == 422 and "not valid JSON or YAML" in bad_yaml.text
    bad_node = client.post("/console/new", data={"csrf": csrf, "goal": "g",
                                                 "plan": "nodes:\n- id: fetch\n  tool: ledger_step\n  retry: {max_attempts: 0}\n"})
    assert bad_node.status_code == 422 and "node fetch" in bad_node.text, bad_node.text
    unknown = client.post("/console/new", data={"csrf": csrf, "goal": "g",
                                                "plan": '{"nodes": [{"id": "x", "tool": "nope"}]}'})
    assert unknown.status_code == 422 and "nope" in unknown.text
    # The plan check's errors sit on the node at fault, with the line where that node starts.
    plan = "nodes:\n  - id: fine\n    tool: ledger_step\n    args: {value: x}\n  - id: bad\n    tool: nope\n"
    page = client.post("/console/new", data={"csrf": csrf, "goal": "g", "plan": plan}).text
    fault = re.search(r'<li data-node="bad" class="fault">(.*?)</li>\s*</ol>', page, re.S).group(1)
    assert "line 5" in fault and "unknown tool &#39;nope&#39;" in fault
    assert re.search(r'<li data-node="fine" class="fine">.*?line 2', page, re.S)
    assert 'aria-describedby="form-errors plan-check"' in page
    forged = client.post("/console/new", data={"csrf": "x", "goal": "g"})
    assert forged.status_code == 403
    ok = client.post("/console/new", data={"csrf": csrf, "goal": "two steps", "priority": "high",
                                           "max_cost_usd": "2.5", "plan": "- id: a\n  tool: ledger_step\n  args: {value: x}\n"},
                     follow_redirects=False)
    assert ok.status_code == 303, ok.text
    task_id = ok.headers["location"].rsplit("/", 1)[1]
    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["priority"] == "high" and task["budget"]["max_cost_usd"] == 2.5
    page = client.get(ok.headers["location"])
    assert page.status_code == 200 and "two steps" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_viewer_gets_no_action_buttons_and_no_new_task_form(console):
    client, backend = console
    viewer = client.portal.call(backend.key, "default", Role.viewer)
    task_id = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN},
                          headers={"Authorization": f"Bearer {backend.admin_key}"}).json()["task_id"]
    csrf = _sign_in(client, viewer)
    page = client.get(f"/console/tasks/{task_id}").text
    assert 'data-member="false"' in page and 'id="cancel"' not in page and "Raise budget" not in page
    assert "New task" not in client.get("/console/tasks").text
    r = client.delete(f"/v1/tasks/{task_id}", headers={CSRF_HEADER: csrf})
    assert r.status_code == 403 and "member" in r.json()["detail"]
    assert client.post("/console/new", data={"csrf": csrf, "goal": "g"}).status_code == 403


def test_system_page_is_for_admins(console, monkeypatch):
    client, backend = console
    member = client.portal.call(backend.key, "acme", Role.member)
    _sign_in(client, member)
    assert client.get("/console/system").status_code == 403
    assert "System" not in client.get("/console/tasks").text
    _sign_in(client, backend.admin_key)
    busy = client.post("/v1/tasks", json={"goal": "busy work", "plan": PLAN, "priority": "high"},
                       headers={"Authorization": f"Bearer {member}"}).json()["task_id"]
    assert "No task failed in the last 24 hours" in client.get("/console/system").text
    failed = client.post("/v1/tasks", json={"goal": "doomed", "plan": PLAN},
                         headers={"Authorization": f"Bearer {member}"}).json()["task_id"]
    client.portal.call(backend.store.append, failed, [NewEvent(EventType.status, {
        "status": "failed", "reason": "node 'a' failed: boom <b>"})])
    errors = client.get("/console/system").text
    assert f'<tr data-task="{failed}">' in errors and "boom &lt;b&gt;" in errors and "boom <b>" not in errors
    page = client.get("/console/system")
    assert page.status_code == 200 and "<h1>System</h1>" in page.text
    assert re.search(r'<tr data-tenant="acme" data-priority="high"><td>acme</td><td>high</td>'
                     r'<td class="num">1</td>', page.text)
    assert "Grafana" not in page.text
    assert "No task is running." in page.text
    assert client.portal.call(backend.store.claim, busy)  # a Conductor drives it now
    running = client.get("/console/system").text
    assert re.search(rf'<table class="running">.*<tr data-task="{busy}">.*<td>acme</td>.*busy work', running, re.S)
    assert "Model groups" in page.text and "This application has no LLM router deployment" in page.text
    monkeypatch.setenv("TROUPE_GRAFANA_URL", "http://127.0.0.1:3000/d/troupe")
    monkeypatch.setenv("TROUPE_RAY_DASHBOARD_URL", "javascript:alert(1)")  # never linked
    page = client.get("/console/system").text
    assert 'href="http://127.0.0.1:3000/d/troupe"' in page and "Ray dashboard" not in page
    # /healthz shows an admin's session the details too, and anyone else only {ok}.
    assert set(client.get("/healthz").json()) > {"ok"}
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, "not-a-session")
    assert set(client.get("/healthz").json()) == {"ok"}


def test_collections_page_offers_ingest_to_members_only(console):
    client, backend = console
    viewer = client.portal.call(backend.key, "acme", Role.viewer)
    _sign_in(client, backend.admin_key)
    page = client.get("/console/collections")
    assert page.status_code == 200 and 'id="ingest-form"' in page.text and 'id="search-form"' in page.text
    _sign_in(client, viewer)
    assert 'id="ingest-form"' not in client.get("/console/collections").text


def test_tasks_list_pages_with_a_cursor_and_filters_by_status(console):
    client, backend = console
    for i in range(23):
        assert client.post("/v1/tasks", json={"goal": f"goal {i}", "plan": PLAN},
                           headers={"Authorization": f"Bearer {backend.admin_key}"}).status_code == 202
    _sign_in(client, backend.admin_key)
    first = client.get("/console/tasks").text
    assert first.count("data-task=") == 20 and "goal 22" in first and "goal 2<" not in first
    older = re.search(r'href="(/console/tasks\?status=&amp;q=&amp;tenant=&amp;cursor=[^"]+)" rel="next"', first).group(1)
    second = client.get(older.replace("&amp;", "&")).text
    assert second.count("data-task=") == 3 and "goal 0<" in second and 'rel="next"' not in second
    assert "data-task=" not in client.get("/console/tasks?status=cancelled").text
    assert client.get("/console/tasks?status=queued").text.count("data-task=") == 20
    assert client.get("/console/tasks?cursor=garbage").status_code == 200  # a stale link starts over
    # Search: goals holding the text, any case; LIKE's wildcards are literal; rows follow the search.
    found = client.get("/console/tasks?q=GOAL+2").text
    assert sorted(re.findall(r">goal (\d+)<", found)) == ["2", "20", "21", "22"] and 'value="GOAL 2"' in found
    assert "goal 3<" not in client.get("/console/tasks/rows?q=goal+2").text
    assert "No task's goal holds “50%”" in client.get("/console/tasks?q=50%25").text
    assert client.get("/console/tasks?q=goal+_").text.count("data-task=") == 0


def test_replay_folds_the_first_events_for_the_tasks_tenant_only(console):
    client, backend = console
    task_id = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN},
                          headers={"Authorization": f"Bearer {backend.admin_key}"}).json()["task_id"]
    assert client.get(f"/console/tasks/{task_id}/replay/1").status_code == 401  # no session
    _sign_in(client, backend.admin_key)
    r = client.get(f"/console/tasks/{task_id}/replay/1")
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["last_seq"] == 1
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get(f"/console/tasks/{task_id}/replay/0").status_code == 404
    other = client.portal.call(backend.key, "acme", Role.member)
    _sign_in(client, other)
    assert client.get(f"/console/tasks/{task_id}/replay/1").status_code == 404


def test_previews_highlight_code_table_parquet_and_embed_pdfs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deployments.console.preview import MAX_TABLE_ROWS, preview

    code = tmp_path / "tool.py"
    code.write_text('def f():\n    return "<script>alert(1)</script>"\n')
    view = preview(code, "text/x-python")
    assert view["kind"] == "code" and view["language"] == "Python"
    assert '<span class="k">def</span>' in view["html"] and "<script>" not in view["html"]
    assert "&lt;script&gt;" in view["html"]

    table = tmp_path / "data.parquet"
    pq.write_table(pa.table({"city": ["Oslo", None] * 150, "people": list(range(300))}), table)
    view = preview(table, "application/octet-stream")
    assert view["kind"] == "table" and view["head"] == ["city", "people"]
    assert len(view["rows"]) == MAX_TABLE_ROWS and view["rows"][:2] == [["Oslo", "0"], ["", "1"]]
    assert view["note"] == "200 of 300 rows, 2 of 2 columns"
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert preview(tmp_path / "bad.parquet", "application/octet-stream")["kind"] == "none"

    (tmp_path / "r.pdf").write_bytes(b"%PDF-1.4\n")
    assert preview(tmp_path / "r.pdf", "application/pdf") == {"kind": "pdf"}
    (tmp_path / "notes.txt").write_text("plain <b>text</b>")
    assert preview(tmp_path / "notes.txt", "text/plain") == {"kind": "text", "text": "plain <b>text</b>"}


def test_new_task_form_takes_acceptance_tests_and_attachments(console):
    client, backend = console
    csrf = _sign_in(client, backend.admin_key)
    form = {"csrf": csrf, "goal": "read the notes", "plan": "- id: a\n  tool: ledger_step\n  args: {value: x}\n"}
    bad = client.post("/console/new", data={**form, "acceptance_tests": "- id: t\n  check_type: no_such_check\n"})
    assert bad.status_code == 422 and "acceptance_tests.0.check_type" in bad.text
    assert "no_such_check" in bad.text  # the form comes back as it was sent
    tests = "- id: has\n  check_type: exists\n  params: {artifact: notes.txt}\n"
    ok = client.post("/console/new", data={**form, "acceptance_tests": tests},
                     files=[("files", ("notes.txt", b"the pager rotates on Tuesdays", "text/plain")),
                            ("files", ("", b"", "application/octet-stream"))],  # what an empty file input posts
                     follow_redirects=False)
    assert ok.status_code == 303, ok.text
    task = client.get(f"/v1/tasks/{ok.headers['location'].rsplit('/', 1)[1]}").json()
    assert [t["id"] for t in task["acceptance_tests"]] == ["has"]
    assert task["attachments"] == ["attachments/notes.txt"]


def test_admins_list_every_tenant_and_act_for_one(console):
    client, backend = console
    acme = client.portal.call(backend.key, "acme", Role.member)
    globex = client.portal.call(backend.key, "globex", Role.member)
    ids = {}
    for key, tenant in ((acme, "acme"), (globex, "globex")):
        ids[tenant] = client.post("/v1/tasks", json={"goal": f"work of {tenant}", "plan": PLAN},
                                  headers={"Authorization": f"Bearer {key}"}).json()["task_id"]
    csrf = _sign_in(client, backend.admin_key)
    every = client.get("/console/tasks").text
    assert ids["acme"] in every and ids["globex"] in every and "<td>globex</td>" in every
    assert '<option value="acme">' in every  # the tenant picker suggests tenants that have tasks
    one = client.get("/console/tasks?tenant=globex").text
    assert ids["globex"] in one and ids["acme"] not in one
    assert client.get("/console/tasks/rows?tenant=acme").text.count("data-task=") == 1
    bad = client.get("/console/tasks?tenant=../etc")
    assert bad.status_code == 422 and "is not a tenant name" in bad.text
    # Another tenant's task: the page offers to act for its tenant; the API still says 404 until then.
    page = client.get(f"/console/tasks/{ids['acme']}")
    assert page.status_code == 200 and "Act for acme and open the task" in page.text
    assert client.get(f"/v1/tasks/{ids['acme']}").status_code == 404
    assert client.post("/console/act", data={"tenant": "acme"}).status_code == 403  # no CSRF token
    r = client.post("/console/act", data={"csrf": csrf, "tenant": "acme", "next": f"/console/tasks/{ids['acme']}"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/console/tasks/{ids['acme']}"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    page = client.get(f"/console/tasks/{ids['acme']}").text
    assert 'data-task-id="' + ids["acme"] in page and "acting for acme" in page
    assert client.get(f"/v1/tasks/{ids['acme']}").json()["tenant"] == "acme"  # the session's API calls too
    assert client.get(f"/v1/tasks/{ids['globex']}").status_code == 404
    assert client.post("/console/act", data={"csrf": csrf, "tenant": "x y"}).status_code == 422
    r = client.post("/console/act", data={"csrf": csrf, "tenant": "", "next": "//evil.example/"},
                    follow_redirects=False)
    assert r.headers["location"] == "/console/tasks"
    assert "acting for" not in client.get("/console/tasks").text
    assert client.get(f"/v1/tasks/{ids['acme']}").status_code == 404


def test_a_member_sees_only_its_tenant_whatever_the_link_or_cookie_says(console):
    client, backend = console
    acme = client.portal.call(backend.key, "acme", Role.member)
    globex = client.portal.call(backend.key, "globex", Role.member)
    theirs = client.post("/v1/tasks", json={"goal": "globex only", "plan": PLAN},
                         headers={"Authorization": f"Bearer {globex}"}).json()["task_id"]
    csrf = _sign_in(client, acme)
    page = client.get("/console/tasks?tenant=globex").text
    assert theirs not in page and 'id="tenant"' not in page and "<th scope=\"col\">Tenant</th>" not in page
    assert client.get(f"/console/tasks/{theirs}").status_code == 404
    assert client.post("/console/act", data={"csrf": csrf, "tenant": "globex"}).status_code == 403
    client.cookies.set("troupe_act", "globex")  # a cookie set by hand is ignored for non-admins
    assert client.get(f"/v1/tasks/{theirs}").status_code == 404
    assert theirs not in client.get("/console/tasks").text


def test_system_page_shows_each_deployments_replicas_in_words():
    from deployments.console.system import health_entry

    entry = health_entry("deployments", {"Conductor": {"ok": True, "status": "HEALTHY",
                                                       "replicas": {"running": 2, "starting": 1}}})
    [conductor] = entry["children"]
    assert (conductor["ok"], conductor["status"], conductor["children"]) == (True, "healthy", [])
    assert conductor["replicas"] == "3 replicas: 2 running, 1 starting"
    assert health_entry("x", {"ok": True, "replicas": {"running": 1}})["replicas"] == "1 replica: 1 running"
