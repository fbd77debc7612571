"""The LLM router: config and its guards in-process; chat, tool calls, streaming, usage,
cooldown and fallback over real Ray Serve against the scripted model server."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.llm_router import LLMRequestError, LLMRouter, RouterClient, RouterConfig, models_from_env
from tests.conftest import free_port
from tests.support.scripted_llm import litellm_params, router_config
from troupe.llm import ChatRequest, LLMUnavailable

ROOT = Path(__file__).resolve().parent.parent
ray = pytest.mark.ray
HI = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# -- config, no Ray ----------------------------------------------------------------------

def test_serve_config_router_settings_validate():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    [router] = [d for d in config["applications"][0]["deployments"] if d["name"] == "LLMRouter"]
    settings = RouterConfig.model_validate(router["user_config"])
    assert settings.fallbacks == [{"fast": ["reason"]}] and settings.model_list == []


def test_one_env_var_configures_both_fast_and_reason():
    env = {"TROUPE_MODEL_REASON": "hosted_vllm/Qwen/Qwen2.5-7B-Instruct",
           "TROUPE_MODEL_API_BASE": "http://vllm:8000/v1", "TROUPE_MODEL_API_KEY": "k"}
    models = models_from_env(env)
    assert {m.model_name for m in models} == {"fast", "reason"}
    assert all(m.litellm_params == {"model": "hosted_vllm/Qwen/Qwen2.5-7B-Instruct", "api_base": "http://vllm:8000/v1",
                                    "api_key": "k"} for m in models)
    assert models_from_env({}) == []


def test_user_config_goes_on_top_of_the_app_config():
    base = RouterConfig.model_validate({"model_list": [{"model_name": "fast", "litellm_params": {"model": "openai/a"}}],
                                        "num_retries": 1})
    merged = base.merged({"num_retries": 4, "cooldown_time": 5})
    assert merged.model_list == base.model_list and (merged.num_retries, merged.cooldown_time) == (4, 5)
    assert base.merged(None) == base


def test_bad_config_names_the_field():
    with pytest.raises(ValidationError, match="model_name"):
        RouterConfig.model_validate({"model_list": [{"model_name": "fsat", "litellm_params": {"model": "openai/x"}}]})
    with pytest.raises(ValidationError, match="litellm_params.model is required"):
        RouterConfig.model_validate({"model_list": [{"model_name": "fast", "litellm_params": {"api_base": "x"}}]})
    with pytest.raises(ValidationError, match="num_retries"):
        RouterConfig.model_validate({"num_retries": -1})


def test_hosted_model_is_refused_in_tests_before_any_call():
    # conftest sets TROUPE_MODEL_ALLOWED_HOSTS=127.0.0.1: a public endpoint must never be reached.
    router = LLMRouter.func_or_class
    with pytest.raises(ValueError, match="no api_base.*TROUPE_MODEL_ALLOWED_HOSTS=127.0.0.1"):
        router({"model_list": [{"model_name": "reason", "litellm_params": {"model": "openai/gpt-4o-mini"}}]})
    with pytest.raises(ValueError, match="host 'api.example.com' is not in TROUPE_MODEL_ALLOWED_HOSTS"):
        router({"model_list": [{"model_name": "reason", "litellm_params": {
            "model": "hosted_vllm/m", "api_base": "https://api.example.com/v1"}}]})


def test_router_errors_survive_pickling():
    for exc in (LLMUnavailable("down", retryable=False), LLMRequestError("no such group", status=404)):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and back.__dict__ == exc.__dict__


# -- over Ray Serve ------------------------------------------------------------------------

@ray
def test_hosted_model_fails_the_deployment_not_a_call(serve_http):
    from ray import serve

    config = {"model_list": [{"model_name": "reason", "litellm_params": {"model": "openai/gpt-4o-mini"}}]}
    try:
        with pytest.raises(RuntimeError, match="Deploying application llm-router-hosted failed"):
            serve.run(LLMRouter.bind(config), name="llm-router-hosted", route_prefix=None)
        message = serve.status().applications["llm-router-hosted"].deployments["LLMRouter"].message
        assert "TROUPE_MODEL_ALLOWED_HOSTS" in message
    finally:
        serve.delete("llm-router-hosted")


@pytest.fixture(scope="module")
def deploy_router(serve_http):
    """Deploy an LLMRouter alone as its own Serve app (no HTTP route); returns its handle."""
    from ray import serve

    names: list[str] = []

    def deploy(name: str, config: dict | None) -> object:
        names.append(name)
        return serve.run(LLMRouter.bind(config), name=name, route_prefix=None)

    yield deploy
    for name in names:
        serve.delete(name)


@pytest.fixture(scope="module")
def priced_router(deploy_router, scripted_llm_server):
    """fast and reason from the scripted server; reason has a price so that cost is recorded."""
    config = router_config(scripted_llm_server, num_retries=0, cooldown_time=0)
    config["model_list"][1]["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    return deploy_router("llm-router-priced", config)


@pytest.fixture(scope="module")
def failover_router(deploy_router, scripted_llm_server):
    """fast: a dead deployment (closed port) and a live one; vision: two dead ones."""
    dead = {"model": "openai/dead", "api_base": f"http://127.0.0.1:{free_port()}/v1", "api_key": "x"}
    return deploy_router("llm-router-failover", {
        "model_list": [{"model_name": "fast", "litellm_params": dead},
                       {"model_name": "fast", "litellm_params": litellm_params(scripted_llm_server, "live")},
                       {"model_name": "reason", "litellm_params": litellm_params(scripted_llm_server, "live")},
                       {"model_name": "vision", "litellm_params": dead},
                       {"model_name": "vision", "litellm_params": dead}],
        "num_retries": 2, "allowed_fails": 0, "cooldown_time": 120, "fallbacks": []})


@ray
async def test_chat_records_usage_and_cost(priced_router, scripted_llm):
    scripted_llm.add("Paris.", model="reason")
    reply = await RouterClient(priced_router).chat(ChatRequest(group="reason", messages=HI, temperature=0.2,
                                                               max_tokens=50, task_id="t-1"))
    assert reply.content == "Paris." and reply.finish_reason == "stop" and reply.tool_calls == []
    [sent] = scripted_llm.requests
    assert sent["model"] == "reason" and sent["messages"] == HI
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50
    usage = reply.usage
    assert usage.group == "reason" and usage.model == "openai/reason"
    assert usage.tokens_in > 5 and usage.tokens_out == 2  # what the scripted server reported
    assert usage.cost_usd == pytest.approx(usage.tokens_in * 1e-6 + usage.tokens_out * 2e-6)
    assert 0 < usage.latency_s < 30
    assert await RouterClient(priced_router).configured()


@ray
async def test_tool_calls_and_json_content(priced_router, scripted_llm):
    scripted_llm.add([{"name": "get_weather", "arguments": {"city": "Paris"}}], model="fast")
    scripted_llm.add({"city": "Paris", "temp_c": 21}, model="fast")
    client = RouterClient(priced_router)
    first = await client.chat(ChatRequest(group="fast", messages=HI, tools=[WEATHER_TOOL]))
    assert first.finish_reason == "tool_calls" and first.content is None
    [call] = first.tool_calls
    assert call.name == "get_weather" and call.args() == {"city": "Paris"}
    assert scripted_llm.requests[0]["tools"] == [WEATHER_TOOL]
    # The conversation goes on with the tool's result; the model answers in JSON.
    messages = [*HI, first.assistant_message(), {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    fmt = {"type": "json_object"}
    second = await client.chat(ChatRequest(group="fast", messages=messages, response_format=fmt))
    assert json.loads(second.content) == {"city": "Paris", "temp_c": 21}
    sent = scripted_llm.requests[1]
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["response_format"] == fmt


@ray
async def test_streaming_yields_openai_sse_chunks(priced_router, scripted_llm):
    scripted_llm.add("Paris is the capital.", model="fast")
    body = {"model": "fast", "messages": HI, "stream_options": {"include_usage": True},
            "api_base": "http://203.0.113.1/v1"}  # a client-sent endpoint is never used
    lines = [line async for line in priced_router.options(stream=True).stream.remote(body)]
    assert lines[-1] == "data: [DONE]\n\n" and all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        "Paris is the capital."
    assert any(c.get("usage", {}).get("completion_tokens") for c in chunks)
    assert scripted_llm.requests[0]["stream"] is True


@ray
async def test_unknown_group_and_unconfigured_group(priced_router, scripted_llm):
    with pytest.raises(LLMRequestError, match="unknown model 'gpt-4'.*fast, reason") as info:
        await priced_router.completion.remote({"model": "gpt-4", "messages": HI})
    assert info.value.status == 404
    with pytest.raises(LLMUnavailable, match="no model serves group 'vision'.*TROUPE_MODEL_VISION") as unavailable:
        await RouterClient(priced_router).chat(ChatRequest(group="vision", messages=HI))
    assert unavailable.value.retryable is False
    assert scripted_llm.requests == []


@ray
async def test_dead_deployment_cools_down_and_the_live_one_answers(failover_router, scripted_llm):
    scripted_llm.add("alive", model="live", times=None)
    client = RouterClient(failover_router)

    async def dead_deployment() -> dict:
        status = await failover_router.status.remote()
        return next(d for d in status["deployments"] if d["id"] == "fast-0")

    # Routing is a shuffle: ask until the dead deployment has been picked once and failed.
    for _ in range(30):
        assert (await client.chat(ChatRequest(group="fast", messages=HI))).content == "alive"
        if (await dead_deployment())["cooling_down"]:
            break
    dead = await dead_deployment()
    assert dead["cooling_down"] and dead["failures"] == 1 and "Connection error" in dead["last_error"]
    # While it cools down, it is not tried again: every call goes to the live deployment.
    for _ in range(10):
        assert (await client.chat(ChatRequest(group="fast", messages=HI))).content == "alive"
    await asyncio.sleep(0.5)  # LiteLLM's callbacks run after the reply
    assert (await dead_deployment())["calls"] == 1
    assert all(r["model"] == "live" for r in scripted_llm.requests)


@ray
async def test_every_deployment_dead_is_unavailable_with_the_reason(failover_router, scripted_llm):
    client = RouterClient(failover_router)
    started = time.monotonic()
    with pytest.raises(LLMUnavailable) as first:
        await client.chat(ChatRequest(group="vision", messages=HI))
    assert type(first.value) is LLMUnavailable and first.value.retryable  # not Ray's wrapper
    assert "group 'vision'" in first.value.message and "Connection error" in first.value.message
    # Now both are cooling down: the router says so without trying them.
    with pytest.raises(LLMUnavailable, match="cooling down") as second:
        await client.chat(ChatRequest(group="vision", messages=HI))
    assert "vision-0" in second.value.message and "vision-1" in second.value.message
    assert time.monotonic() - started < 30
    status = await failover_router.status.remote()
    assert {d["id"] for d in status["deployments"] if d["group"] == "vision" and d["cooling_down"]} == \
        {"vision-0", "vision-1"}
    assert scripted_llm.requests == []


@ray
async def test_no_model_configured(deploy_router):
    handle = deploy_router("llm-router-empty", None)
    client = RouterClient(handle)
    assert await client.configured() is False
    assert await handle.models.remote() == []
    with pytest.raises(LLMUnavailable, match="TROUPE_MODEL_REASON") as info:
        await client.chat(ChatRequest(messages=HI))
    assert info.value.retryable is False
    with pytest.raises(LLMUnavailable, match="no model is configured"):
        await RouterClient(None).chat(ChatRequest(messages=HI))


@pytest.fixture(scope="module")
def emulating_router(deploy_router, scripted_llm_server):
    """fast emulates tool calls (by config), reason keeps native ones."""
    return deploy_router("llm-router-emulating", router_config(
        scripted_llm_server, num_retries=0, cooldown_time=0, tool_calls={"fast": "emulated"}))


@ray
async def test_emulated_tool_calls_round_trip_through_a_json_envelope(emulating_router, scripted_llm):
    scripted_llm.add({"tool": "get_weather", "arguments": {"city": "Paris"}}, model="fast")
    scripted_llm.add({"final_answer": "21 C in Paris"}, model="fast")
    scripted_llm.add([{"name": "get_weather", "arguments": {"city": "Oslo"}}], model="reason")
    client = RouterClient(emulating_router)
    first = await client.chat(ChatRequest(group="fast", messages=HI, tools=[WEATHER_TOOL]))
    [call] = first.tool_calls
    assert (call.name, call.args(), first.content, first.finish_reason) == ("get_weather", {"city": "Paris"}, None,
                                                                            "tool_calls")
    assert first.usage.tool_calls == "emulated" and first.usage.engine is None
    sent = scripted_llm.requests[0]
    assert "tools" not in sent and sent["response_format"]["json_schema"]["name"] == "ToolEnvelope"
    assert "get_weather" in sent["messages"][0]["content"]
    messages = [*HI, first.assistant_message(), {"role": "tool", "tool_call_id": call.id, "content": "21 C"}]
    second = await client.chat(ChatRequest(group="fast", messages=messages, tools=[WEATHER_TOOL]))
    assert (second.content, second.tool_calls) == ("21 C in Paris", [])
    replayed = scripted_llm.requests[1]["messages"]
    assert [m["role"] for m in replayed] == ["system", "user", "assistant", "user"]
    assert json.loads(replayed[2]["content"]) == {"tool": "get_weather", "arguments": {"city": "Paris"}}
    assert replayed[3]["content"] == "Result of get_weather:\n21 C"
    native = await client.chat(ChatRequest(group="reason", messages=HI, tools=[WEATHER_TOOL]))
    assert native.tool_calls[0].args() == {"city": "Oslo"} and native.usage.tool_calls is None
    assert scripted_llm.requests[2]["tools"] == [WEATHER_TOOL]
    status = await emulating_router.status.remote()
    assert status["tool_calls"] == {"fast": "emulated", "reason": "native"}


async def test_an_unreachable_router_is_unavailable_not_unconfigured():
    # A router that cannot be reached must not send callers down the offline path: they wait.
    from types import SimpleNamespace

    from ray.serve.exceptions import BackPressureError

    from deployments.llm_router import RouterClient
    from troupe.llm import LLMUnavailable

    async def down():
        raise BackPressureError(num_queued_requests=10, max_queued_requests=10)

    client = RouterClient(SimpleNamespace(configured=SimpleNamespace(remote=lambda: down())))
    with pytest.raises(LLMUnavailable) as raised:
        await client.configured()
    assert raised.value.retryable and "unreachable" in raised.value.message
    assert await RouterClient(None).configured() is False  # no router at all: no model
