"""A test web site on a loopback address: many linked pages, a form, JS-rendered content,
robots.txt, a slow page, a huge page, cookies and redirects. Every request is logged."""

from __future__ import annotations

import html
import json
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DOC_PAGES = 40  # /docs/p0 .. p39, a binary tree: p{i} links to p{2i+1} and p{2i+2}
HUGE_BYTES = 64 * 2**20


def _page(title: str, body: str, head: str = "") -> bytes:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>{head}</head>"
            f"<body>{body}</body></html>").encode()


class Site:
    def __init__(self, host: str = "127.0.0.1"):
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.huge_sent = 0
        self.delay_s = 0.0  # added to every /docs/ page, to make concurrency observable
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                site.requests.append(("GET", self.path))
                site.route(self, "GET")

            def do_POST(self) -> None:
                site.requests.append(("POST", self.path))
                site.route(self, "POST")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [p for _, p in self.requests]

    # -- routes -----------------------------------------------------------------------------------

    def route(self, h: BaseHTTPRequestHandler, method: str) -> None:
        u = urlsplit(h.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        p = u.path
        if p == "/robots.txt":
            return self.send(h, b"User-agent: *\nDisallow: /docs/private/\n", "text/plain")
        if p == "/docs/" or p.startswith("/docs/p") or p.startswith("/docs/private/"):
            return self.doc(h, p)
        if p == "/form" and method == "GET":
            return self.send(h, _page("Contact form", """
                <h1>Contact</h1>
                <form action="/form" method="post">
                  <label for=name>Name</label><input id=name name=name>
                  <label for=topic>Topic</label><select name=topic><option>news</option><option>sales</option></select>
                  <button type=submit>Send</button>
                </form>"""))
        if p == "/form" and method == "POST":
            length = int(h.headers.get("Content-Length", 0))
            data = {k: v[0] for k, v in parse_qs(h.rfile.read(length).decode()).items()}
            cookie = SimpleCookie(h.headers.get("Cookie", ""))
            who = cookie["who"].value if "who" in cookie else "nobody"
            return self.send(h, _page("Thanks", f"<h1>Thanks {html.escape(data.get('name', '?'))}</h1>"
                                                f"<p>Topic: {html.escape(data.get('topic', '?'))}</p><p>Cookie: {who}</p>"))
        if p == "/js":
            return self.send(h, _page("JS page", "<h1>Catalog</h1><ul id=items><li>loading…</li></ul>", head="""
                <script>
                  setTimeout(() => fetch('/api/items').then(r => r.json()).then(items => {
                    document.getElementById('items').innerHTML =
                      items.map(i => `<li class=item><span class=name>${i.name}</span> <b class=price>$${i.price}</b></li>`).join('');
                  }), 200);
                </script>"""))
        if p == "/api/items":
            items = [{"name": "Widget", "price": 9.5}, {"name": "Gadget", "price": 1200}, {"name": "Doohickey", "price": 3}]
            return self.send(h, json.dumps(items).encode(), "application/json")
        if p == "/slow":
            self._stop.wait(float(q.get("s", "20")))
            return self.send(h, _page("Slow", "<p>finally</p>"))
        if p == "/huge":
            return self.huge(h)
        if p == "/setcookie":
            return self.send(h, _page("Set", f"<p>set {html.escape(q['v'])}</p>"),
                             headers={"Set-Cookie": f"who={q['v']}; Path=/"})
        if p == "/whoami":
            cookie = SimpleCookie(h.headers.get("Cookie", ""))
            who = cookie["who"].value if "who" in cookie else "nobody"
            return self.send(h, _page("Who", f"<p id=who>{who}</p>"))
        if p == "/redirect":
            h.send_response(302)
            h.send_header("Location", q["to"])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if p == "/download":
            return self.send(h, b"%PDF-1.4 not really", "application/pdf",
                             headers={"Content-Disposition": "attachment; filename=x.pdf"})
        if p == "/ws":  # opens a WebSocket (which routes don't see) to wherever it is told
            return self.send(h, _page("WS", f"<p id=state>opening</p><script>const ws = new WebSocket('{q['to']}');"
                                            "ws.onerror = () => document.getElementById('state').textContent = 'ws failed';"
                                            "ws.onopen = () => document.getElementById('state').textContent = 'ws open';"
                                            "</script>"))
        if p == "/link":  # one link, to wherever it is told
            return self.send(h, _page("Link", f"<a id=go href='{html.escape(q['to'])}'>go</a>"))
        if p == "/mixed":  # an allowed page that pulls a subresource from a refused address
            return self.send(h, _page("Mixed", f"<p>hello</p><img src='{q['img']}'>"))
        return self.send(h, _page("Not found", "<p>404</p>"), status=404)

    def doc(self, h: BaseHTTPRequestHandler, path: str) -> None:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay_s:
                self._stop.wait(self.delay_s)
            self._doc(h, path)
        finally:
            with self._lock:
                self.inflight -= 1

    def _doc(self, h: BaseHTTPRequestHandler, path: str) -> None:
        if path == "/docs/":
            links = "".join(f"<li><a href='/docs/p{i}'>Page {i}</a></li>" for i in range(3))
            return self.send(h, _page("Docs index", f"<main><h1>Docs</h1><ul>{links}</ul></main>"))
        if path.startswith("/docs/private/"):
            return self.send(h, _page("Secret", "<p>robots.txt forbids this page</p>"))
        try:
            i = int(path.removeprefix("/docs/p"))
        except ValueError:
            return self.send(h, _page("Not found", "<p>404</p>"), status=404)
        kids = [k for k in (2 * i + 1, 2 * i + 2) if k < DOC_PAGES]
        links = "".join(f"<a href='/docs/p{k}'>child {k}</a> " for k in kids)
        # The same pages again under other spellings: the crawler must fetch each once.
        dupes = f"<a href='/docs/p{i}#top'>self</a> <a href='/docs/./p{i}?utm_source=x'>self again</a>"
        body = (f"<article><h1>Page {i}</h1><p>This is documentation page number {i} about topic "
                f"{'alpha' if i % 2 else 'beta'} and the zebra{i} token.</p>{links} {dupes} "
                f"<a href='/docs/private/secret{i}'>secret</a> <a href='/docs/'>index</a> "
                f"<a href='http://127.0.0.2:9/elsewhere'>off-site</a></article>")
        return self.send(h, _page(f"Doc page {i}", body))

    def huge(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        chunk = b"<p>" + b"lorem ipsum dolor sit amet " * 40 + b"</p>\n"
        try:
            h.wfile.write(b"<html><head><title>Huge</title></head><body><h1>Huge page</h1>")
            while self.huge_sent < HUGE_BYTES and not self._stop.is_set():
                h.wfile.write(chunk)
                self.huge_sent += len(chunk)
        except OSError:
            pass  # the client stopped reading: that is the point

    def send(self, h: BaseHTTPRequestHandler, body: bytes, ctype: str = "text/html; charset=utf-8", *,
             status: int = 200, headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
