"""Shared fixtures. One Ray cluster serves every test that needs one (marker `ray`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Nothing in the test session may reach a hosted model or phone home.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Provider keys and endpoints, and a developer's own TROUPE_MODEL_* choice, are dropped (Ray
# workers inherit this environment); the LLM router refuses any endpoint but loopback.
_PROVIDER_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")
for _var in list(os.environ):
    if (_var.startswith("TROUPE_MODEL_") or _var.endswith(("_API_KEY", "_API_BASE", "_BASE_URL", "_API_TOKEN"))
            or _var in _PROVIDER_VARS):
        os.environ.pop(_var, None)
os.environ["TROUPE_MODEL_ALLOWED_HOSTS"] = "127.0.0.1"
# A model key that lives only in the processes' environment (workers inherit it, as they inherit
# a Kubernetes Secret's): tests check it never comes back out. Not in runtime_env: Ray's
# runtime_env agent logs those variables.
MODEL_KEY_PROBE = f"sk-probe-{os.urandom(12).hex()}"
os.environ["TROUPE_TEST_MODEL_KEY"] = MODEL_KEY_PROBE
# HTTP reaches the apps as it does under `make run`: HAProxy in front of each Gateway
# (troupe/serve_ingress.py). Set before Ray starts: its processes inherit this environment.
from troupe import serve_ingress  # noqa: E402

serve_ingress.apply()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the whole session; logical CPUs above the 2 real cores so
    that zero-CPU Serve replicas and small Ray Data pools all fit."""
    import ray

    for attempt in (1, 2):  # on a loaded machine Ray's agents can miss their start-up deadline once
        if ray.is_initialized():
            break
        try:
            _start_ray(ray)
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


def _start_ray(ray) -> None:
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        namespace="troupe-tests",
        # Workers import test-only modules (tests.support.tools) from the repo root.
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                                  "PYTHONPATH": str(REPO_ROOT),
                                  # The tests' own sites are on loopback, which egress refuses by default.
                                  "TROUPE_EGRESS_ALLOW_HOSTS": "127.0.0.1",
                                  # Model calls only to the scripted server (tests/support/scripted_llm.py).
                                  "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1"}},
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeApp:
    """A deployed Troupe application and how to reach it."""

    def __init__(self, name: str, route_prefix: str, base_url: str, home: Path, args: dict,
                 env: dict[str, str] | None = None):
        self.name, self.route_prefix, self.base_url, self.home, self.args = name, route_prefix, base_url, home, args
        self.env = env or {}
        """Environment variables of every process of the app (serve_config.yaml's runtime_env env_vars)."""
        self.deleted = True

    def deploy(self) -> None:
        import ray

        def serve_run(args: dict, name: str, route_prefix: str) -> None:  # nested: pickled by value
            from ray import serve

            from deployments.app import app

            serve.run(app(args), name=name, route_prefix=route_prefix, blocking=False)

        if self.env:
            # serve.run gives each deployment its caller's runtime_env: called from a task that has
            # these variables (merged with the session's), every replica has them, and so do the
            # actors replicas start (Supervisor, ingest jobs), as under `serve run` with the app's
            # runtime_env.
            run = ray.remote(num_cpus=0, runtime_env={"env_vars": self.env})(serve_run)
            ray.get(run.remote(self.args, self.name, self.route_prefix))
        else:
            serve_run(self.args, self.name, self.route_prefix)
        self.deleted = False
        _wait_healthy(self)

    def delete(self) -> None:
        """Delete the app and stop its detached actors. `serve.delete` alone leaves them running
        on purpose (a redeploy finds them again); a session that left every finished app's
        Supervisor, Scheduler and outbox polling ran out of memory and cores late in the run."""
        from ray import serve

        if self.deleted:
            return
        serve.delete(self.name)
        stop_detached_actors(self.name, self.home)
        self.deleted = True

    @property
    def admin_key(self) -> str:
        """The first admin key, which the Gateway wrote on its first start."""
        return (self.home / "admin.key").read_text().strip()

    def client(self, key: str | None = None, **kw):
        """An HTTP client with a key (default: the admin key; pass key="" for none)."""
        import httpx

        key = self.admin_key if key is None else key
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **kw.pop("headers", {})}
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 30), headers=headers, **kw)

    def new_key(self, tenant: str, role: str = "member", **fields) -> str:
        """A fresh API key's secret, made with the admin key."""
        with self.client() as c:
            r = c.post("/v1/keys", json={"tenant": tenant, "role": role, **fields})
            r.raise_for_status()
            return r.json()["secret"]


def stop_detached_actors(app_name: str, home: Path) -> None:
    """Stop the app's detached actors, found by the names the app gives them."""
    import ray

    from actors.ingest_jobs import ingest_jobs_name
    from actors.qdrant_owner import release_owner
    from actors.redis_server import redis_actor_name
    from actors.scheduler import scheduler_name
    from actors.supervisor import supervisor_name
    from actors.webhook_outbox import outbox_name
    from memory.semantic import QdrantSettings
    from troupe.settings import Settings

    settings = Settings(app_name=app_name, home=home)
    for name in (f(settings) for f in (supervisor_name, scheduler_name, outbox_name, ingest_jobs_name,
                                       redis_actor_name)):
        try:
            ray.kill(ray.get_actor(name, namespace=settings.namespace), no_restart=True)
        except ValueError:  # never started (no schedule, no webhook, no collection)
            pass
    release_owner(QdrantSettings.for_app(home).path)


def _wait_healthy(app: ServeApp, timeout_s: float = 180) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{app.base_url}/healthz", timeout=10)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"app {app.name} not healthy after {timeout_s}s: {last}")


@pytest.fixture(scope="session")
def serve_http(ray_cluster):
    """Serve's HTTP proxy on a free port, shared by every app of the session."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _make_app(serve_http: str, tmp_path_factory, name: str, prefix: str, *, home: Path | None = None,
              env: dict[str, str] | None = None, **args) -> ServeApp:
    home = home or tmp_path_factory.mktemp(name)
    # Redis: the machine's own (rate limits are keyed by app and home, so sessions never share them).
    full_args = {"home": str(home), "app_name": name, "redis_url": os.environ.get("TROUPE_TEST_REDIS_URL",
                                                                                  "redis://127.0.0.1:6379/0"),
                 "tool_modules": ["tools.builtin", "tools.web.tools", "tools.documents", "tools.extraction",
                                  "tests.support.tools"],
                 # Many apps share the session's 4 logical CPUs: a half-CPU browser reservation in each
                 # left none for an engine replica or Ray Data's parse tasks, which then waited forever.
                 "browser_num_cpus": 0, **args}
    app = ServeApp(name, prefix, serve_http + (prefix if prefix != "/" else ""), home, full_args, env)
    app.deploy()
    return app


@contextlib.contextmanager
def visible_home():
    """A fresh app home where the python sandbox does not hide it by itself (not under /tmp)."""
    import shutil
    import uuid

    from tests.support.visible import visible_base

    home = visible_base() / ".troupe" / "tests" / uuid.uuid4().hex[:12]
    home.mkdir(parents=True)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- session apps, each deleted after the last test that can use it -------------------------
# Every app is a dozen processes (~3 GB with its browser); five of them alive to the end of the
# session, beside the modules' own, left a 2-core, 24 GiB machine swamped in the web tests.

_SESSION_APPS: dict[str, ServeApp] = {}
_LAST_USER: dict[str, str] = {}
"""Session app fixture -> node id of the last collected test that can use it."""
_CHOOSERS = {"any_store_app": ("troupe_app", "troupe_app_pg"), "any_store_llm_app": ("llm_app", "llm_app_pg"),
             "store_app": ("crash_app",)}
"""Fixtures that pick a session app with `request.getfixturevalue` (invisible in `fixturenames`)."""
_RELEASABLE = {"troupe_app", "crash_app", "troupe_app_pg", "llm_app", "llm_app_pg"}


def _session_app(fixture: str, app: ServeApp) -> ServeApp:
    _SESSION_APPS[fixture] = app
    return app


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    _LAST_USER.clear()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for chooser, apps in _CHOOSERS.items():
            if chooser in names:
                names.update(apps)
        for name in names & _RELEASABLE:
            _LAST_USER[name] = item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if nextitem is None:  # the session ends: its fixtures (Serve itself) are already torn down
        return
    for fixture, nodeid in _LAST_USER.items():
        if nodeid == item.nodeid and fixture in _SESSION_APPS:
            _SESSION_APPS.pop(fixture).delete()


@pytest.fixture(scope="session")
def troupe_app(serve_http, tmp_path_factory) -> ServeApp:
    """The main application, at /, on embedded SQLite. Its home is under the repository, as
    `make run`'s is, not under /tmp (which the python sandbox replaces with its own): see
    tests/support/visible.py."""
    with visible_home() as home:
        yield _session_app("troupe_app", _make_app(serve_http, tmp_path_factory, "troupe", "/", home=home))


@pytest.fixture(scope="session")
def crash_app(serve_http, tmp_path_factory) -> ServeApp:
    """A second application for crash tests, with a small dispatch capacity so that some
    tasks stay queued; crash tests may kill its processes without disturbing the main app."""
    return _session_app("crash_app", _make_app(
        serve_http, tmp_path_factory, "troupe-crash", "/crash",
        supervisor={"max_running_tasks": 3, "max_running_per_tenant": 3, "max_backoff_s": 2}))


@pytest.fixture(scope="session")
def troupe_app_pg(serve_http, tmp_path_factory) -> ServeApp:
    """The main application's twin on PostgreSQL (a database of its own, dropped afterwards)."""
    from tests.support.local_backend import postgres_database

    with postgres_database() as url, visible_home() as home:  # as troupe_app's, for the isolation tests
        app = _make_app(serve_http, tmp_path_factory, "troupe-pg", "/pg", home=home, database_url=url)
        yield _session_app("troupe_app_pg", app)
        app.delete()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_app(request) -> ServeApp:
    """The main application on each store."""
    return request.getfixturevalue("troupe_app" if request.param == "sqlite" else "troupe_app_pg")


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_url(request, tmp_path):
    """An empty store's URL: SQLite in the test's tmp dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'troupe.db'}"
        return
    from tests.support.local_backend import postgres_database

    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def scripted_llm_server():
    """One scripted OpenAI-compatible model server (real HTTP) for the session."""
    from tests.support.scripted_llm import ScriptedLLM

    server = ScriptedLLM()
    yield server
    server.close()


@pytest.fixture
def scripted_llm(scripted_llm_server):
    """The session's scripted model with an empty script. At teardown the test fails if a
    scripted reply went unused or a request matched no script."""
    scripted_llm_server.reset()
    yield scripted_llm_server
    try:
        scripted_llm_server.check()
    finally:
        scripted_llm_server.reset()


@pytest.fixture(scope="session")
def llm_app(serve_http, tmp_path_factory, scripted_llm_server) -> ServeApp:
    """A Troupe application at /llm whose LLM router serves `fast` and `reason` from the
    scripted server (as models `fast` and `reason`: `scripted_llm.add(..., model="reason")`).
    No retries, fallbacks or cooldowns, so one call takes exactly one scripted reply."""
    from tests.support.scripted_llm import router_config

    return _session_app("llm_app", _make_app(
        serve_http, tmp_path_factory, "troupe-llm", "/llm",
        llm=router_config(scripted_llm_server, num_retries=0, fallbacks=[], cooldown_time=0),
        supervisor={"model_probe_s": 1}))


@pytest.fixture(scope="session")
def llm_app_pg(serve_http, tmp_path_factory, scripted_llm_server) -> ServeApp:
    """`llm_app`'s twin on PostgreSQL."""
    from tests.support.local_backend import postgres_database
    from tests.support.scripted_llm import router_config

    with postgres_database() as url:
        app = _make_app(serve_http, tmp_path_factory, "troupe-llm-pg", "/llm-pg", database_url=url,
                        llm=router_config(scripted_llm_server, num_retries=0, fallbacks=[], cooldown_time=0),
                        supervisor={"model_probe_s": 1})
        yield _session_app("llm_app_pg", app)
        app.delete()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_llm_app(request) -> ServeApp:
    """`llm_app` on each store."""
    return request.getfixturevalue("llm_app" if request.param == "sqlite" else "llm_app_pg")
