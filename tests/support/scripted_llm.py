"""A scripted OpenAI-compatible model server over real HTTP, so LiteLLM's whole code path
(HTTP client, SSE parsing, usage, exception mapping) runs in tests.

    scripted.add("Paris")                                  # next request gets this text
    scripted.add([{"name": "python", "arguments": {"code": "1"}}])  # tool calls
    scripted.add({"ok": True}, model="judge")              # JSON content, only for model `judge`
    scripted.add(Fail(503), times=2)                       # two 503s
    scripted.add(lambda body: body["messages"][-1]["content"].upper(), times=None)

A request no script matches gets a 500 and is recorded as an error; `check()` (run at
fixture teardown) fails the test on such errors and on scripted replies left unused.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Fail", "ScriptedLLM", "litellm_params", "router_config"]


@dataclass(frozen=True)
class Fail:
    """Answer with an HTTP error in OpenAI's error shape."""

    status: int = 500
    message: str = "scripted failure"


Reply = Any  # str | list[dict] (tool calls) | dict (JSON content) | int | Fail | Callable[[dict], Reply]


@dataclass
class _Script:
    reply: Reply
    when: Callable[[dict[str, Any]], bool] | None
    model: str | None
    times: int | None  # None: any number of times (but at least once)
    delay_s: float
    used: int = 0
    where: str = field(default="")

    def matches(self, body: dict[str, Any]) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.model is not None and body.get("model") != self.model:
            return False
        return self.when is None or bool(self.when(body))


def _tokens(text: str) -> int:
    # Roughly what a BPE tokenizer gives for English (4 characters a token), never 0.
    return max(1, math.ceil(len(text) / 4))


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(_tokens(json.dumps(m.get("content") or "")) + 4 for m in body.get("messages", [])) + 3


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        args = call.get("arguments", {})
        out.append({"id": call.get("id") or f"call_{i}_{uuid.uuid4().hex[:8]}", "type": "function",
                    "function": {"name": call["name"],
                                 "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return out


class ScriptedLLM:
    """The server and its script. `url` is `http://127.0.0.1:<port>`; LiteLLM wants `url + "/v1"`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        """The Authorization header of each request, in order (what key the caller sent)."""
        self.errors: list[str] = []
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()

    # -- the test-facing API ------------------------------------------------------------

    def add(self, reply: Reply, *, when: Callable[[dict[str, Any]], bool] | None = None, model: str | None = None,
            times: int | None = 1, delay_s: float = 0.0) -> ScriptedLLM:
        """Script a reply for the next `times` requests that match (`model` is the name
        after the provider prefix, e.g. `echo` for `openai/echo`); `times=None`: any number,
        at least one. Earlier scripts win."""
        import traceback

        where = "".join(traceback.format_stack(limit=2)[:1]).strip().splitlines()[0]
        with self._lock:
            self._scripts.append(_Script(reply, when, model, times, delay_s, where=where))
        return self

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.requests.clear()
            self.authorizations.clear()
            self.errors.clear()

    def unused(self) -> list[str]:
        with self._lock:
            return [f"{s.reply!r} (model={s.model}, used {s.used}/{s.times if s.times is not None else 'any'}) "
                    f"added at {s.where}" for s in self._scripts
                    if (s.used < s.times if s.times is not None else s.used == 0)]

    def assert_all_used(self) -> None:
        unused = self.unused()
        assert not unused, "scripted LLM replies never requested:\n  " + "\n  ".join(unused)

    def check(self) -> None:
        """Fail on requests no script matched, then on unused replies."""
        assert not self.errors, "scripted LLM got unexpected requests:\n  " + "\n  ".join(self.errors)
        self.assert_all_used()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- serving ------------------------------------------------------------------------

    def _next(self, body: dict[str, Any]) -> _Script | None:
        with self._lock:
            self.requests.append(body)
            for script in self._scripts:
                if script.matches(body):
                    script.used += 1
                    return script
            last = (body.get("messages") or [{}])[-1].get("content")
            self.errors.append(f"no scripted reply for model={body.get('model')!r}, last message {last!r:.200}")
            return None


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    finish = "stop"
    if isinstance(reply, str):
        message["content"] = reply
    elif isinstance(reply, list):
        message["tool_calls"] = _tool_calls(reply)
        finish = "tool_calls"
    elif isinstance(reply, dict):
        message["content"] = json.dumps(reply)
    else:
        raise TypeError(f"a scripted reply must be str, list of tool calls, dict, int or Fail, not {reply!r}")
    out_text = message["content"] or json.dumps(message.get("tool_calls"))
    prompt, completion = _prompt_tokens(body), _tokens(out_text)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def _chunks(full: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The completion as OpenAI streams it: role, content in pieces, tool calls, finish, usage."""
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}
    message, finish = full["choices"][0]["message"], full["choices"][0]["finish_reason"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    out = [chunk({"role": "assistant", "content": ""})]
    content = message.get("content") or ""
    step = max(1, math.ceil(len(content) / 3))
    out += [chunk({"content": content[i:i + step]}) for i in range(0, len(content), step)]
    for i, call in enumerate(message.get("tool_calls") or []):
        out.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}))
    out.append(chunk({}, finish))
    if include_usage:
        out.append({**base, "choices": [], "usage": full["usage"]})
    return out


def _handler(scripted: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a stream ends when the socket closes.
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "server_error") -> None:
            self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                with scripted._lock:
                    names = sorted({s.model for s in scripted._scripts if s.model} or {"scripted"})
                self._json(200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                             "owned_by": "scripted"} for n in names]})
            else:
                self._error(404, f"no route {self.path}", "invalid_request_error")

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}", "invalid_request_error")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except json.JSONDecodeError as exc:
                return self._error(400, f"body is not JSON: {exc}", "invalid_request_error")
            scripted.authorizations.append(self.headers.get("Authorization") or "")
            script = scripted._next(body)
            if script is None:
                return self._error(500, scripted.errors[-1])
            if script.delay_s:
                time.sleep(script.delay_s)
            reply = script.reply
            try:
                if callable(reply):
                    reply = reply(body)
                if isinstance(reply, int) and not isinstance(reply, bool):
                    reply = Fail(reply)
                if isinstance(reply, Fail):
                    kind = "rate_limit_error" if reply.status == 429 else "server_error"
                    return self._error(reply.status, reply.message, kind)
                full = _completion(body, reply)
            except Exception as exc:  # a broken script is the test's bug: say so loudly
                with scripted._lock:
                    scripted.errors.append(f"scripted reply raised {type(exc).__name__}: {exc}")
                return self._error(500, f"scripted reply raised {exc!r}")
            if not body.get("stream"):
                return self._json(200, full)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for c in _chunks(full, include_usage):
                self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def litellm_params(server: ScriptedLLM, name: str, **extra: Any) -> dict[str, Any]:
    """`litellm_params` of a deployment served by `server` as model `name`."""
    return {"model": f"openai/{name}", "api_base": server.url + "/v1", "api_key": "scripted", **extra}


def router_config(server: ScriptedLLM, groups: tuple[str, ...] = ("fast", "reason"), **settings: Any) -> dict[str, Any]:
    """An LLM router config (`AppArgs.llm`, `RouterConfig`) serving each group from `server`
    as the model of the same name; `settings` are RouterConfig fields (num_retries, ...)."""
    return {"model_list": [{"model_name": g, "litellm_params": litellm_params(server, g)} for g in groups], **settings}
