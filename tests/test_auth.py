"""Authentication and roles on every route, without Ray: the real key table (SQLite), the real
Redis for rate limits, the API as the Gateway builds it."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from deployments.api import GatewayConfig
from deployments.auth import OidcSettings
from memory.access import Role
from tests.support.local_backend import LocalBackend, local_client, postgres_database

PROBLEM = "application/problem+json"
PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}
# Path parameters for routes that take them; the ids need not exist (auth comes first).
PARAMS = {"task_id": "00000000-0000-0000-0000-000000000000", "name": "docs", "job_id": "job", "key_id": "key_x"}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """The key table, audit log and tasks on each store."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def api(tmp_path, database_url):
    backend = LocalBackend(tmp_path, GatewayConfig(), database_url=database_url)
    app, client = local_client(backend)
    with client:
        yield app, client, backend


def _routes(app):
    """(method, concrete path) of every operation in the API's OpenAPI document: a route added
    later without auth fails this file."""
    for template, operations in app.openapi()["paths"].items():
        for method in operations:
            path = template.replace("{name}/ingest", "docs/ingest").replace("{name}/search", "docs/search")
            path = path.replace("artifacts/{name}", "artifacts/report.md")
            for param, value in PARAMS.items():
                path = path.replace("{" + param + "}", value)
            yield method.upper(), path


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_but_healthz_refuses_no_key_and_bad_keys(api):
    app, client, backend = api
    revoked = client.portal.call(backend.key, "acme")
    client.portal.call(backend.access.revoke, client.portal.call(backend.access.find_by_secret, revoked).key_id)
    expired = client.portal.call(lambda: backend.key("acme", expires_in=timedelta(seconds=-1)))
    seen = 0
    for method, path in _routes(app):
        if path == "/healthz":
            continue
        if path.startswith("/v1/hooks/"):  # signed by its trigger's secret, not an API key
            r = client.request(method, path, json={})
            assert r.status_code == 401 and "signature" in r.json()["detail"].lower(), r.text
            continue
        for headers, says in (({}, "Authorization: Bearer"), (_bearer("trp_made-up"), "not valid"),
                              (_bearer(revoked), "revoked"), (_bearer(expired), "expired"),
                              ({"Authorization": "Basic dXNlcjpwdw=="}, "Authorization: Bearer")):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["content-type"] == PROBLEM and r.headers["www-authenticate"].startswith("Bearer")
            assert says in r.json()["detail"], (method, path, r.json())
        seen += 1
    assert seen >= 18


def test_healthz_says_only_ok_without_an_admin_key(api):
    _, client, backend = api
    assert client.get("/healthz").json() == {"ok": True}
    member = client.portal.call(backend.key, "acme")
    assert client.get("/healthz", headers=_bearer(member)).json() == {"ok": True}
    assert "store" in client.get("/healthz", headers=_bearer(backend.admin_key)).json()


def test_roles(api):
    app, client, backend = api
    viewer = _bearer(client.portal.call(backend.key, "acme", Role.viewer))
    member = _bearer(client.portal.call(backend.key, "acme", Role.member))
    admin_only = {("POST", "/v1/keys"), ("GET", "/v1/keys"), ("DELETE", f"/v1/keys/{PARAMS['key_id']}"),
                  ("GET", "/v1/audit")}
    for method, path in _routes(app):
        if path == "/healthz" or path.startswith("/v1/hooks/"):  # hooks: no key, no role (their signature)
            continue
        is_read = method == "GET"
        for headers, allowed in ((viewer, is_read and (method, path) not in admin_only),
                                 (member, (method, path) not in admin_only)):
            r = client.request(method, path, headers=headers, json={})
            if allowed:
                assert r.status_code not in (401, 403), (method, path, r.text)
            else:
                assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, (method, path, r.text)
                assert "role" in r.json()["detail"]
    # Viewers read; they cannot act, whatever the path.
    assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=viewer).status_code == 403
    assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=member).status_code == 202


def test_tenant_header_is_for_admins_only(api):
    _, client, backend = api
    member = _bearer(client.portal.call(backend.key, "acme"))
    task_id = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=member).json()["task_id"]
    # The key's own tenant by default; naming it is allowed, naming another is 403.
    assert client.get(f"/v1/tasks/{task_id}", headers=member).json()["tenant"] == "acme"
    assert client.get(f"/v1/tasks/{task_id}", headers={**member, "X-Troupe-Tenant": "acme"}).status_code == 200
    r = client.get(f"/v1/tasks/{task_id}", headers={**member, "X-Troupe-Tenant": "globex"})
    assert r.status_code == 403 and "only an admin key" in r.json()["detail"]
    # An admin acts for any tenant; without the header it is in its own tenant, where the task is not.
    admin = _bearer(backend.admin_key)
    assert client.get(f"/v1/tasks/{task_id}", headers={**admin, "X-Troupe-Tenant": "acme"}).status_code == 200
    assert client.get(f"/v1/tasks/{task_id}", headers=admin).status_code == 404
    assert client.get("/v1/tasks", headers={**admin, "X-Troupe-Tenant": "../x"}).status_code == 422


def test_keys_are_shown_once_and_stored_as_hashes(api, tmp_path):
    _, client, backend = api
    admin = _bearer(backend.admin_key)
    r = client.post("/v1/keys", json={"tenant": "acme", "role": "viewer", "name": "ci", "expires_in": "30d"},
                    headers=admin)
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    created = r.json()
    secret = created["secret"]
    assert secret.startswith("trp_") and created["prefix"] == secret[:12] and created["expires_at"]
    listed = client.get("/v1/keys", headers=admin).json()
    assert secret not in json.dumps(listed) and {k["key_id"] for k in listed} >= {created["key_id"]}
    stored = str(client.portal.call(_key_rows, backend))
    assert created["key_id"] in stored and secret not in stored and backend.admin_key not in stored
    # Bad input says what to fix.
    bad = client.post("/v1/keys", json={"tenant": "acme", "role": "root", "expires_in": "soon"}, headers=admin)
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["errors"]} == {"role", "expires_in"}
    assert "30d" in bad.json()["detail"]
    assert client.delete("/v1/keys/key_nope", headers=admin).status_code == 404


async def _key_rows(backend) -> list:
    from sqlalchemy import select

    from memory.access import api_keys

    async with backend.access._reader.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(api_keys))]


def test_revocation_holds_on_every_replica_within_a_second(tmp_path, database_url):
    # Two Gateway replicas: two backends over one database, each with its own key cache.
    one, two = LocalBackend(tmp_path, database_url=database_url), LocalBackend(tmp_path, database_url=database_url)
    (_, c1), (_, c2) = local_client(one), local_client(two)
    with c1, c2:
        key = c1.portal.call(one.key, "acme")
        assert c2.get("/v1/tasks", headers=_bearer(key)).status_code == 200  # cached on replica two now
        key_id = c1.portal.call(one.access.find_by_secret, key).key_id
        assert c1.delete(f"/v1/keys/{key_id}", headers=_bearer(one.admin_key)).json()["revoked_at"]
        time.sleep(two.auth.cache_ttl_s + 0.05)
        r = c2.get("/v1/tasks", headers=_bearer(key))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_audit_log_records_changes_and_refusals(api):
    _, client, backend = api
    member_key = client.portal.call(backend.key, "acme")
    member = _bearer(member_key)
    task_id = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=member).json()["task_id"]
    client.delete(f"/v1/tasks/{task_id}", headers=member)
    client.get("/v1/tasks", headers=_bearer("trp_wrong"))
    client.get("/v1/audit", headers=member)  # 403: members do not read the audit log
    client.post(f"/v1/tasks/{task_id}/budget", json={"max_llm_calls": 99}, headers=member)
    client.post("/v1/collections/docs/ingest", files=[("files", ("a.md", "# A\n\ntext\n"))], headers=member)
    admin = _bearer(backend.admin_key)
    made = client.post("/v1/keys", json={"tenant": "acme", "role": "viewer"}, headers=admin).json()
    client.delete(f"/v1/keys/{made['key_id']}", headers=admin)
    items = client.get("/v1/audit", params={"limit": 200}, headers=admin).json()["items"]
    seen = {(e["action"], e["outcome"]) for e in items}
    assert {("POST /v1/tasks", 202), ("DELETE /v1/tasks/{task_id}", 202), ("GET /v1/tasks", 401),
            ("GET /v1/audit", 403), ("POST /v1/keys", 201), ("DELETE /v1/keys/{key_id}", 200)} <= seen, seen
    # A budget raise and an ingest are recorded whatever they answered.
    assert {"POST /v1/tasks/{task_id}/budget", "POST /v1/collections/{name}/ingest"} <= {a for a, _ in seen}, seen
    assert made["secret"] not in json.dumps(items)
    submit = next(e for e in items if e["action"] == "POST /v1/tasks")
    assert submit["tenant"] == "acme" and submit["role"] == "member" and submit["key_id"].startswith("key_")
    assert submit["client"] and member_key not in json.dumps(items)
    # Filters and a cursor.
    page = client.get("/v1/audit", params={"outcome": 401, "limit": 1}, headers=admin).json()
    assert [e["outcome"] for e in page["items"]] == [401]
    assert client.get("/v1/audit", params={"cursor": "nope"}, headers=admin).status_code == 400


def test_rate_limits_per_tenant_shared_by_replicas(tmp_path):
    config = GatewayConfig(tenant_limits={"acme": {"submissions_per_s": 0.01, "submissions_burst": 3}})
    one, two = LocalBackend(tmp_path, config), LocalBackend(tmp_path, config)
    two.limiter = one.limiter.__class__("redis://127.0.0.1:6379/0", prefix=one.limiter.prefix)  # one Redis bucket
    (_, c1), (_, c2) = local_client(one), local_client(two)
    with c1, c2:
        acme, globex = _bearer(c1.portal.call(one.key, "acme")), _bearer(c1.portal.call(one.key, "globex"))
        body = {"goal": "g", "plan": PLAN}
        codes = [c.post("/v1/tasks", json=body, headers=acme).status_code for c in (c1, c2, c1)]
        assert codes == [202, 202, 202]
        for c in (c2, c1):  # the bucket is empty on both replicas
            r = c.post("/v1/tasks", json=body, headers=acme)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert "submissions_per_s=0.01 (burst 3)" in r.json()["detail"]
        assert c2.post("/v1/tasks", json=body, headers=globex).status_code == 202  # others unaffected
        assert c1.get("/v1/tasks", headers=acme).status_code == 200  # reads have their own bucket
        audit = c1.get("/v1/audit", params={"outcome": 429}, headers=_bearer(one.admin_key)).json()["items"]
        assert [(e["action"], e["tenant"]) for e in audit] == [("POST /v1/tasks", "acme")] * 2  # refusals are rows


def test_queued_cap_per_tenant(tmp_path):
    backend = LocalBackend(tmp_path, GatewayConfig(tenant_limits={"acme": {"max_queued_tasks": 2}}))
    _, client = local_client(backend)
    with client:
        acme, globex = _bearer(client.portal.call(backend.key, "acme")), _bearer(client.portal.call(backend.key,
                                                                                                     "globex"))
        body = {"goal": "g", "plan": PLAN}
        assert [client.post("/v1/tasks", json=body, headers=acme).status_code for _ in range(2)] == [202, 202]
        r = client.post("/v1/tasks", json=body, headers=acme)
        assert r.status_code == 429 and "max_queued_tasks=2" in r.json()["detail"] and r.headers["retry-after"]
        assert client.post("/v1/tasks", json=body, headers=globex).status_code == 202


def test_oidc_tokens_map_claims_to_tenant_and_role(tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    oidc = OidcSettings(issuer="https://idp.example", audience="troupe", jwks_file=tmp_path / "jwks.json",
                        tenant_claim="org")

    def token(**claims) -> str:
        base = {"iss": "https://idp.example", "aud": "troupe", "sub": "alice", "org": "acme", "role": "member",
                "exp": int(time.time()) + 300}
        return jwt.encode({**base, **claims}, private, algorithm="RS256", headers={"kid": "k1"})

    backend = LocalBackend(tmp_path, oidc=oidc)
    _, client = local_client(backend)
    with client:
        ok = _bearer(token())
        task_id = client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=ok).json()["task_id"]
        assert client.get(f"/v1/tasks/{task_id}", headers=ok).json()["tenant"] == "acme"
        viewer = _bearer(token(role="viewer"))
        assert client.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers=viewer).status_code == 403
        for bad, says in ((token(aud="other"), "Audience"), (token(exp=int(time.time()) - 10), "expired"),
                          (token(org=None), "'org'"), (token(role="root"), "viewer, member or admin")):
            r = client.get("/v1/tasks", headers=_bearer(bad))
            assert r.status_code == 401 and says in r.json()["detail"], r.json()
        forged = jwt.encode({"iss": "https://idp.example", "aud": "troupe", "sub": "x", "org": "acme",
                             "role": "admin", "exp": int(time.time()) + 60},
                            rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                            headers={"kid": "k1"})
        assert client.get("/v1/tasks", headers=_bearer(forged)).status_code == 401
