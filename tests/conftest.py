"""Shared fixtures. One Ray cluster serves every test that needs one (marker `ray`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Nothing in the test session may reach a hosted model or phone home.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster for the whole session; logical CPUs above the 2 real cores so
    that zero-CPU Serve replicas and small Ray Data pools all fit."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            namespace="troupe-tests",
            # Workers import test-only modules (tests.support.tools) from the repo root.
            runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                                      "PYTHONPATH": str(REPO_ROOT),
                                      # The tests' own sites are on loopback, which egress refuses by default.
                                      "TROUPE_EGRESS_ALLOW_HOSTS": "127.0.0.1"}},
        )
    yield ray
    ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeApp:
    """A deployed Troupe application and how to reach it."""

    def __init__(self, name: str, route_prefix: str, base_url: str, home: Path, args: dict):
        self.name, self.route_prefix, self.base_url, self.home, self.args = name, route_prefix, base_url, home, args

    def deploy(self) -> None:
        from ray import serve

        from deployments.app import app

        serve.run(app(self.args), name=self.name, route_prefix=self.route_prefix, blocking=False)
        _wait_healthy(self)

    def client(self, **kw):
        import httpx

        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 30), **kw)


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


def _make_app(serve_http: str, tmp_path_factory, name: str, prefix: str, **args) -> ServeApp:
    home = tmp_path_factory.mktemp(name)
    full_args = {"home": str(home), "app_name": name,
                 "tool_modules": ["tools.builtin", "tools.web.tools", "tests.support.tools"], **args}
    app = ServeApp(name, prefix, serve_http + (prefix if prefix != "/" else ""), home, full_args)
    app.deploy()
    return app


@pytest.fixture(scope="session")
def troupe_app(serve_http, tmp_path_factory) -> ServeApp:
    """The main application, at /, on embedded SQLite."""
    return _make_app(serve_http, tmp_path_factory, "troupe", "/")


@pytest.fixture(scope="session")
def crash_app(serve_http, tmp_path_factory) -> ServeApp:
    """A second application for crash tests, with a small dispatch capacity so that some
    tasks stay queued; crash tests may kill its processes without disturbing the main app."""
    return _make_app(serve_http, tmp_path_factory, "troupe-crash", "/crash",
                     supervisor={"max_running_tasks": 3, "max_running_per_tenant": 3, "max_backoff_s": 2})
