"""Crawl throughput and browser memory: pages/s crawling a 200-page local site with 1, 2 and 4
concurrent tabs, and memory per browsing context. Prints one JSON line.

    python bench/browse.py [--pages 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.egress import EgressPolicy  # noqa: E402  (after the sys.path line)
from tools.web.browser_pool import BrowserPool  # noqa: E402
from tools.web.config import BrowserPoolConfig, find_chromium  # noqa: E402

FANOUT = 8


def serve_site(pages: int) -> tuple[ThreadingHTTPServer, str]:
    """A tree of `pages` pages: / links to p0..p7, p{i} to p{8i+8}..p{8i+15}."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            if self.path == "/":
                kids = range(FANOUT)
            elif self.path.startswith("/p"):
                i = int(self.path[2:])
                kids = range(FANOUT * i + FANOUT, FANOUT * i + 2 * FANOUT)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            links = "".join(f"<li><a href='/p{k}'>page {k}</a></li>" for k in kids if k < pages)
            text = "<p>" + "Benchmark text with a few words in it. " * 30 + "</p>"
            body = (f"<!doctype html><title>{self.path}</title><main><h1>{self.path}</h1>{text}"
                    f"<ul>{links}</ul></main>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def memory(pool: BrowserPool) -> dict[str, int]:
    """RSS (counts shared pages once per process) and PSS (shares them out) of the browser."""
    rss = pss = 0
    for pid in pool.browser_pids():
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss": rss, "pss": pss}


async def main(pages: int) -> dict:
    server, url = serve_site(pages)
    config = BrowserPoolConfig(max_sessions=16, max_pages_per_session=8)
    result: dict = {"bench": "browse", "site_pages": pages, "cores": os.cpu_count(), "chromium": find_chromium(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)}  # other work on the machine skews pages/s
    async with BrowserPool(config, egress=EgressPolicy(allow_hosts=["127.0.0.1"])) as pool:
        result["chromium_version"] = pool._browser.version if pool._browser else None
        # first-load costs out of the way
        await pool.crawl("warmup", url + "/", max_pages=10, max_depth=2, tenant="bench")
        await pool.release("warmup")
        rates = {}
        for c in (1, 2, 4):
            sid = f"crawl-{c}"
            started = time.perf_counter()
            out = await pool.crawl(sid, url + "/", max_pages=pages, max_depth=4, concurrency=c,
                                   per_host_concurrency=c, tenant="bench")
            elapsed = time.perf_counter() - started
            assert out["stats"]["fetched"] == pages, out["stats"]
            rates[str(c)] = round(pages / elapsed, 1)
            await pool.release(sid)
        result["pages_per_s"] = rates

        await asyncio.sleep(1)
        base = memory(pool)
        n = 8
        for i in range(n):  # idle contexts, each with one page open (a task between steps)
            await pool.browse(f"mem-{i}", f"{url}/p{i}", settle_s=0, tenant="bench")
        await asyncio.sleep(1)
        loaded = memory(pool)
        result["memory"] = {
            "browser_rss_mb": round(base["rss"] / 2**20, 1),
            "browser_pss_mb": round(base["pss"] / 2**20, 1),
            "per_context_rss_mb": round((loaded["rss"] - base["rss"]) / n / 2**20, 1),
            "per_context_pss_mb": round((loaded["pss"] - base["pss"]) / n / 2**20, 1),
            "contexts": n,
        }
    server.shutdown()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.pages))))
