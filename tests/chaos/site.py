"""The chaos workload's web site: one page per task on loopback, and a log of every hit.

The hit log is an external ledger for the browser steps, as the ledger file is for the
other tools: a page fetched again after its `browse` result was recorded is a completed
step run twice."""

from __future__ import annotations

import html
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ChaosSite", "page_title"]


def page_title(tag: str) -> str:
    """The title of task `tag`'s page: what its browse step must output."""
    return f"chaos page {tag}"


class ChaosSite:
    """`url/chaos/<tag>` serves task `tag`'s page; `hits` is [(time, path)]."""

    def __init__(self, host: str = "127.0.0.1"):
        self.hits: list[tuple[float, str]] = []
        lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with lock:
                    site.hits.append((time.time(), self.path))
                tag = self.path.removeprefix("/chaos/")
                if not self.path.startswith("/chaos/") or not tag.isalnum():
                    self.send_error(404)
                    return
                title = html.escape(page_title(tag))
                body = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>Read by the chaos run.</p>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="chaos-site", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
