"""`make run`: `serve run` with Ray's Prometheus endpoint on a fixed port.

`serve run` starts its local Ray cluster with `ray.init()` and no way to choose the metrics
export port, so Ray picks a random one and Prometheus cannot be pointed at it. `serve run`
leaves an already initialised Ray alone, so this starts it first, with the port from
`TROUPE_METRICS_PORT` (default 8080), then hands over to the `serve run` command itself.
That local cluster puts HAProxy in front of the Gateway (troupe/serve_ingress.py).
With RAY_ADDRESS set (an existing cluster) the cluster's own metrics port and ingress apply.
"""

from __future__ import annotations

import os
import sys

DEFAULT_METRICS_PORT = 8080


def metrics_port(env: dict[str, str] | os._Environ = os.environ) -> int:
    raw = env.get("TROUPE_METRICS_PORT", str(DEFAULT_METRICS_PORT))
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"TROUPE_METRICS_PORT={raw!r} is not a port number: set it to a free port, e.g. 8080") from None
    if not 1024 <= port <= 65535:
        raise SystemExit(f"TROUPE_METRICS_PORT={port} is outside 1024-65535: pick a free port, e.g. 8080")
    return port


def main(argv: list[str]) -> None:
    from troupe import serve_ingress

    if not os.environ.get("RAY_ADDRESS"):
        serve_ingress.apply()  # before Ray starts (and before Serve's constants are read): HAProxy in front
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    if not os.environ.get("RAY_ADDRESS"):
        port = metrics_port()
        ray.init(namespace=SERVE_NAMESPACE, _metrics_export_port=port)
        print(f"Troupe metrics for Prometheus: http://127.0.0.1:{port}/metrics", flush=True)
    cli.main(args=["run", *argv], prog_name="serve")


if __name__ == "__main__":
    main(sys.argv[1:])
