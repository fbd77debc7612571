"""A model server that answers at once, for measuring what the LLM path itself costs: an
OpenAI-compatible /v1/chat/completions (uvicorn, keep-alive) in a process of its own, so
that neither side's cost hides behind a slow server.

    python bench/fast_model.py PORT
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

REPLY = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-model",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


def serve(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def completions(request):  # noqa: ANN001, ANN202
        await request.body()
        return JSONResponse(REPLY)

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class FastModel:
    """The server in a subprocess; `url` is its base (LiteLLM wants `url + "/v1"`)."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(port)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/v1/chat/completions", json={}, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the fast model server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
