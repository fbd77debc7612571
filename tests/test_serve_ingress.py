"""HTTP reaches the Gateway through HAProxy (troupe/serve_ingress.py), in the tests as under `make run`."""

import os
import stat
from urllib.parse import urlparse

import psutil
import pytest

from troupe import serve_ingress


def test_each_local_cluster_gets_its_own_haproxy_files_and_ports():
    first, second = {}, {}
    assert serve_ingress.apply(first)["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    serve_ingress.apply(second)
    home = first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700  # the admin socket controls HAProxy
    assert first["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(home + os.sep)
    for name in ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                 "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "RAY_SERVE_HAPROXY_STATS_PORT"):
        assert first[name] != second[name], name
    assert first["RAY_SERVE_HAPROXY_STATS_PORT"] != first["RAY_SERVE_HAPROXY_METRICS_PORT"]


def test_the_operators_choice_wins():
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}  # Serve's Python proxy
    assert serve_ingress.apply(env) == {} and env == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": "18404"}
    serve_ingress.apply(env)
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


@pytest.mark.ray
def test_the_sessions_http_port_is_haproxys(troupe_app):
    port = urlparse(troupe_app.base_url).port
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listeners and all(psutil.Process(pid).name().startswith("haproxy") for pid in listeners), listeners
    with troupe_app.client() as c:
        r = c.get("/v1/tasks")
        assert r.status_code == 200, r.text
