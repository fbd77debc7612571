"""The Gateway's OpenAI-compatible API: the OpenAI SDK against a real Troupe app whose
router serves the scripted model; errors as problem+json. The first two tests need no Ray
(the Ray ones are marked one by one)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.llm_router import LLMRouter
from memory.access import Role
from tests.support.local_backend import LocalBackend, local_client
from tests.support.scripted_llm import Fail

HI = [{"role": "user", "content": "Say hello in French."}]
PROBLEM = "application/problem+json"


# -- without Ray: the routes over an in-process router -------------------------------------

class _InProcessHandle:
    """Calls a router object the way a DeploymentHandle does (`.method.remote(...)`)."""

    def __init__(self, router: Any):
        self._router = router

    def options(self, **_: Any) -> _InProcessHandle:
        return self

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._router, name)

        def remote(*args: Any) -> Any:
            result = method(*args)
            return _Generator(result) if hasattr(result, "__anext__") else result

        return SimpleNamespace(remote=remote)


class _Generator:
    def __init__(self, gen: Any):
        self._gen = gen

    def __aiter__(self) -> _Generator:
        return self

    async def __anext__(self) -> Any:
        return await self._gen.__anext__()

    def cancel(self) -> None:
        pass


@pytest.fixture
def make_client(tmp_path):
    def make(llm: Any, config: Any = None) -> TestClient:
        backend = LocalBackend(tmp_path, config, llm=llm)
        _, client = local_client(backend)
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {backend.admin_key}"
        made.append(client)
        return client

    made: list[TestClient] = []
    yield make
    for client in made:
        client.__exit__(None, None, None)


def test_no_model_configured_is_503_saying_how(make_client):
    client = make_client(_InProcessHandle(LLMRouter.func_or_class(None)))
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={"model": "reason", "messages": HI, "stream": stream})
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert r.json()["title"] == "No model configured" and "TROUPE_MODEL_REASON" in r.json()["detail"]
    assert client.get("/v1/models").json() == {"object": "list", "data": []}


def test_app_without_router_is_503(make_client):
    r = make_client(None).post("/v1/chat/completions", json={"model": "reason", "messages": HI})
    assert r.status_code == 503 and "no LLM router" in r.json()["detail"]


# -- over Ray Serve: the OpenAI SDK against the gateway ------------------------------------

@pytest.fixture(scope="module")
def sdk(llm_app):
    from openai import OpenAI

    return OpenAI(base_url=llm_app.base_url + "/v1", api_key=llm_app.admin_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(llm_app):
    with llm_app.client() as c:
        yield c


@pytest.mark.ray
def test_sdk_chat_completion(sdk, scripted_llm):
    scripted_llm.add("Bonjour !", model="reason")
    response = sdk.chat.completions.create(model="reason", messages=HI, temperature=0)
    assert response.choices[0].message.content == "Bonjour !"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens > 5 and response.usage.completion_tokens == 3
    [sent] = scripted_llm.requests
    assert sent["messages"] == HI and sent["temperature"] == 0


@pytest.mark.ray
def test_sdk_streaming(sdk, scripted_llm):
    scripted_llm.add("Bonjour, tout le monde !", model="fast")
    stream = sdk.chat.completions.create(model="fast", messages=HI, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour, tout le monde !"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.ray
def test_sdk_tool_calls(sdk, scripted_llm):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    scripted_llm.add([{"name": "get_weather", "arguments": {"city": "Lyon"}}], model="fast")
    response = sdk.chat.completions.create(model="fast", messages=HI, tools=[tool])
    [call] = response.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Lyon"}
    assert response.choices[0].finish_reason == "tool_calls"
    assert scripted_llm.requests[0]["tools"] == [tool]


@pytest.mark.ray
def test_models_lists_the_groups(sdk):
    assert sorted(m.id for m in sdk.models.list()) == ["fast", "reason"]


@pytest.mark.ray
@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_naming_the_groups(http, scripted_llm, stream):
    r = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HI, "stream": stream})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert "'gpt-4o'" in r.json()["detail"] and "fast, reason" in r.json()["detail"]


@pytest.mark.ray
@pytest.mark.parametrize(("body", "status", "field"), [
    ({"messages": HI}, 422, "model"),
    ({"model": "fast"}, 422, "messages"),
    ({"model": "fast", "messages": []}, 422, "messages"),
    ({"model": "fast", "messages": "hello"}, 422, "messages"),
    ({"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}, 422, "messages.0.role"),
    ({"model": "fast", "messages": HI, "stream": "often"}, 422, "stream"),
])
def test_bad_body_is_a_problem_naming_the_field(http, body, status, field):
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == status and r.headers["content-type"] == PROBLEM
    assert field in [e["field"] for e in r.json()["errors"]]


@pytest.mark.ray
def test_malformed_json_is_400(http):
    r = http.post("/v1/chat/completions", content=b'{"model": "fast", "messages": [',
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM


@pytest.mark.ray
@pytest.mark.parametrize("stream", [False, True])
def test_model_failure_is_503_with_retry_after(http, scripted_llm, stream):
    scripted_llm.add(Fail(503, "overloaded"), model="reason")
    r = http.post("/v1/chat/completions", json={"model": "reason", "messages": HI, "stream": stream})
    assert r.status_code == 503 and r.headers["content-type"] == PROBLEM and r.headers["retry-after"] == "5"
    assert "group 'reason'" in r.json()["detail"] and "overloaded" in r.json()["detail"]


@pytest.mark.ray
def test_model_rejecting_the_request_is_400(http, scripted_llm):
    scripted_llm.add(Fail(400, "messages: too long"), model="fast")
    r = http.post("/v1/chat/completions", json={"model": "fast", "messages": HI})
    assert r.status_code == 400 and "too long" in r.json()["detail"]


@pytest.mark.ray
def test_sdk_errors_map_to_openai_exceptions(llm_app, scripted_llm):
    # The SDK reads the problem's status: clients handle these like OpenAI's own errors.
    import openai

    client = openai.OpenAI(base_url=llm_app.base_url + "/v1", api_key=llm_app.admin_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=llm_app.base_url + "/v1", api_key="trp_not-a-key", max_retries=0).models.list()
    assert httpx.get(llm_app.base_url + "/v1/models",
                     headers={"Authorization": f"Bearer {llm_app.admin_key}"}).json()["object"] == "list"



def test_model_api_is_held_to_the_tenant_budget_and_recorded(make_client, scripted_llm):
    # The real router in-process against the scripted server, priced so that each call costs.
    from deployments.api import GatewayConfig
    from tests.support.scripted_llm import litellm_params

    params = {**litellm_params(scripted_llm, "reason"), "input_cost_per_token": 0.001,
              "output_cost_per_token": 0.002}
    router = LLMRouter.func_or_class({"model_list": [{"model_name": "reason", "litellm_params": params}],
                                      "num_retries": 0, "fallbacks": [], "cooldown_time": 0})
    client = make_client(_InProcessHandle(router),
                         GatewayConfig(tenant_limits={"acme": {"model_calls_per_day": 2}}))
    backend = client.app.state.backend
    acme = {"Authorization": f"Bearer {client.portal.call(backend.key, 'acme')}"}
    scripted_llm.add("one", model="reason")
    scripted_llm.add("two", model="reason")
    for _ in range(2):
        assert client.post("/v1/chat/completions", json={"model": "reason", "messages": HI},
                           headers=acme).status_code == 200
    r = client.post("/v1/chat/completions", json={"model": "reason", "messages": HI}, headers=acme)
    assert r.status_code == 429 and "model_calls_per_day=2" in r.json()["detail"] and int(r.headers["retry-after"]) > 0
    from datetime import datetime, timedelta, timezone

    cost, calls = client.portal.call(backend.access.model_spend, "acme",
                                     datetime.now(timezone.utc) - timedelta(days=1))
    assert calls == 2 and cost > 0  # recorded against the tenant, priced by LiteLLM's cost map
    # Another tenant has its own budget; viewers may not call models at all.
    scripted_llm.add("three", model="reason")
    assert client.post("/v1/chat/completions", json={"model": "reason", "messages": HI}).status_code == 200
    viewer = {"Authorization": f"Bearer {client.portal.call(backend.key, 'acme', Role.viewer)}"}
    assert client.post("/v1/chat/completions", json={"model": "reason", "messages": HI},
                       headers=viewer).status_code == 403
