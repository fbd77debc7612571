"""LLM path benchmark: model calls per second through the LLMRouter deployment against raw
HTTP calls to the same server from one process.

    python bench/llm_path.py [--calls 2000] [--concurrency 64]

The model is bench/fast_model.py, an OpenAI-compatible server in its own process that
answers at once (so the server's cost hides neither side's). `raw` is httpx posting /v1/chat/completions from this process; `router` is
`RouterClient.chat` (what the Conductor, Planner and Verifier use) through the LLMRouter
deployment's handle, LiteLLM's Router and its HTTP client; `litellm_router_in_process` is
LiteLLM's Router alone in this process, the ceiling for `router`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import ProcessCPU, deploy, start_profiles

MESSAGES = [{"role": "user", "content": "Say hi."}]


async def rate(call, n: int, concurrency: int) -> float:
    left = list(range(n))

    async def worker() -> None:
        while left:
            left.pop()
            await call()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return round(n / (time.monotonic() - t0), 1)


async def raw(url: str, n: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def call() -> None:
            r = await c.post("/v1/chat/completions", json={"model": "fast", "messages": MESSAGES},
                             headers={"Authorization": "Bearer sk-bench"})
            r.raise_for_status()
            assert r.json()["choices"][0]["message"]["content"] == "hi"
        await rate(call, 50, concurrency)  # warm up
        return await rate(call, n, concurrency)


async def in_process(url: str, n: int, concurrency: int) -> float:
    """LiteLLM's Router alone, in this process: the ceiling the LLMRouter deployment works under."""
    import litellm

    router = litellm.Router(model_list=[{"model_name": "fast", "litellm_params": {
        "model": "openai/fast", "api_base": f"{url}/v1", "api_key": "sk-bench"}}], num_retries=0)

    async def call() -> None:
        reply = await router.acompletion(model="fast", messages=MESSAGES)
        assert reply.choices[0].message.content == "hi"
    await rate(call, 50, concurrency)
    return await rate(call, n, concurrency)


async def routed(app_name: str, n: int, concurrency: int, profile_dir: Path | None = None
                 ) -> tuple[float, dict[str, float]]:
    from ray import serve

    from deployments.llm_router import RouterClient
    from troupe.llm import ChatRequest

    client = RouterClient(serve.get_deployment_handle("LLMRouter", app_name=app_name))

    async def call() -> None:
        reply = await client.chat(ChatRequest(group="fast", messages=MESSAGES))
        assert reply.content == "hi"
    await rate(call, 50, concurrency)
    cpu = ProcessCPU(app_name)
    spies = start_profiles({k: v for k, v in cpu.pids().items() if k == "LLMRouter"}, profile_dir, 10) \
        if profile_dir else []
    cpu.start()
    result = await rate(call, n, concurrency)
    spent = cpu.stop()
    for spy in spies:
        spy.wait()
    return result, {k: round(v * 1000 / n, 3) for k, v in spent.items() if v > 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile-dir", type=Path, default=None, help="record the LLMRouter with py-spy")
    args = parser.parse_args()

    from bench.fast_model import FastModel
    from tests.conftest import free_port
    from tests.support.scripted_llm import router_config

    model = FastModel(free_port())
    try:
        with deploy("sqlite", "bench-llm", llm=router_config(model, num_retries=0, fallbacks=[],
                                                              cooldown_time=0)) as app:
            raw_rate = asyncio.run(raw(model.url, args.calls, args.concurrency))
            litellm_rate = asyncio.run(in_process(model.url, args.calls, args.concurrency))
            router_rate, cpu_ms = asyncio.run(routed(app.app_name, args.calls, args.concurrency,
                                                             args.profile_dir))
    finally:
        model.close()
    print(json.dumps({"bench": "llm_path", "calls": args.calls, "concurrency": args.concurrency,
                      "raw_httpx_calls_per_s": raw_rate, "litellm_router_in_process_calls_per_s": litellm_rate,
                      "router_calls_per_s": router_rate,
                      "ratio": round(router_rate / raw_rate, 3), "router_cpu_ms_per_call": cpu_ms}))


if __name__ == "__main__":
    main()
