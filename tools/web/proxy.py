"""A loopback HTTP proxy that a browser context sends all its traffic through.

Route handlers never see redirects, WebSocket handshakes or preconnects, and Chromium would
resolve host names itself. Through this proxy every connection the page opens is checked
against the egress policy and made to the address that was checked, so neither a redirect
nor a second DNS answer can reach a refused address. One proxy per session: its port is
its identity, so no credentials are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from tools.egress import EgressDenied, EgressPolicy, Resolver
from tools.registry import ToolError

__all__ = ["EgressProxy"]

log = logging.getLogger("troupe.web.proxy")

_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te", b"upgrade"}
_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024


class EgressProxy:
    def __init__(
        self,
        policy: Callable[[], EgressPolicy],
        resolver: Resolver,
        *,
        on_refused: Callable[[EgressDenied], None] | None = None,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
    ):
        self._policy = policy
        self._resolver = resolver
        self._on_refused = on_refused
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # a client that hung up, went quiet or sent garbage, or the proxy closing
        except Exception:  # one broken connection must not take the proxy down
            log.exception("egress proxy connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._idle_timeout_s)
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            url = f"https://{host}:{port}/"
        else:
            url = target
        upstream = await self._open(url, writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
                await self._relay_both(reader, writer, up_reader, up_writer)
                return
            parts = urlsplit(url)
            origin_form = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = [h for h in header_lines if h.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            # One request per connection: the next request on a kept-alive client socket could
            # name another host, so the client must come back through the check.
            up_writer.write(f"{method} {origin_form} {version}\r\n".encode("latin-1")
                            + b"\r\n".join([*headers, b"Connection: close"]) + b"\r\n\r\n")
            await self._send_body(reader, up_writer, header_lines)
            await self._pipe(up_reader, writer)
        finally:
            up_writer.close()

    async def _open(self, url: str, writer: asyncio.StreamWriter):
        try:
            addresses = await self._policy().check_url(url, resolver=self._resolver)
        except EgressDenied as exc:
            if self._on_refused:
                self._on_refused(exc)
            await self._reply(writer, 403, exc.message)
            return None
        except ToolError as exc:  # resolution failed
            await self._reply(writer, 502, exc.message)
            return None
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        last: Exception | None = None
        for address in addresses:  # the checked addresses, never a fresh lookup
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), self._connect_timeout_s)
            except (TimeoutError, OSError) as exc:
                last = exc
        why = str(last or "") or "timed out"
        await self._reply(writer, 502, f"could not connect to {parts.hostname}:{port}: {why}")
        return None

    async def _reply(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        body = message.encode()
        reason = {403: "Forbidden", 502: "Bad Gateway"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"X-Troupe-Egress: {'refused' if status == 403 else 'failed'}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _send_body(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, headers: list[bytes]) -> None:
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in headers)}
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            while True:  # relay chunks as they are, stopping after the last one
                size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), self._idle_timeout_s)
                up.write(size_line)
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                        up.write(line)
                    up.write(b"\r\n")
                    break
                up.write(await asyncio.wait_for(reader.readexactly(size + 2), self._idle_timeout_s))
        else:
            remaining = int(fields.get(b"content-length", b"0") or 0)
            while remaining > 0:
                data = await asyncio.wait_for(reader.read(min(remaining, _CHUNK)), self._idle_timeout_s)
                if not data:
                    break
                up.write(data)
                remaining -= len(data)
        await up.drain()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await asyncio.wait_for(src.read(_CHUNK), self._idle_timeout_s):
            dst.write(data)
            await dst.drain()

    async def _relay_both(self, r1, w1, r2, w2) -> None:
        tasks = [asyncio.ensure_future(self._pipe(r1, w2)), asyncio.ensure_future(self._pipe(r2, w1))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
