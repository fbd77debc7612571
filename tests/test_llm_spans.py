"""Model calls are spans of their task's trace with the OpenTelemetry GenAI attributes
(gen_ai.*), made by the real LLMRouter class (in process) against the scripted model server."""

from __future__ import annotations

import uuid

import pytest
from deployments.llm_router import LLMRouter
from tests.support.scripted_llm import router_config
from tests.support.spans import memory_exporter
from troupe.llm import ChatRequest, LLMUnavailable

exporter = None


def setup_module():
    global exporter
    exporter = memory_exporter()


@pytest.fixture
def router(scripted_llm):
    config = router_config(scripted_llm, num_retries=0, cooldown_time=0, fallbacks=[])
    config["model_list"][1]["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    return LLMRouter.func_or_class(config)


async def test_a_model_call_is_a_gen_ai_span_of_its_task(router, scripted_llm):
    task_id = str(uuid.uuid4())
    scripted_llm.add("Paris.", model="reason")
    exporter.clear()
    reply = await router.chat(ChatRequest(group="reason", messages=[{"role": "user", "content": "Capital?"}],
                                          temperature=0.2, max_tokens=20, task_id=task_id))
    [s] = [s for s in exporter.get_finished_spans() if s.name == "llm"]
    assert s.context.trace_id == uuid.UUID(task_id).int and s.attributes["troupe.task_id"] == task_id
    a = s.attributes
    assert (a["gen_ai.operation.name"], a["gen_ai.system"], a["gen_ai.request.model"]) == ("chat", "openai", "reason")
    assert a["gen_ai.response.model"] == "openai/reason"
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"]) == (0.2, 20)
    assert a["gen_ai.usage.input_tokens"] == reply.usage.tokens_in > 0
    assert a["gen_ai.usage.output_tokens"] == reply.usage.tokens_out == 2
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)


async def test_a_failed_model_call_is_an_error_span(router, scripted_llm):
    exporter.clear()
    router_down = LLMRouter.func_or_class({"model_list": [{"model_name": "fast", "litellm_params": {
        "model": "openai/dead", "api_base": "http://127.0.0.1:9/v1", "api_key": "x"}}], "num_retries": 0,
        "cooldown_time": 0, "fallbacks": []})
    with pytest.raises(LLMUnavailable):
        await router_down.chat(ChatRequest(group="fast", messages=[{"role": "user", "content": "Hi"}],
                                           task_id=str(uuid.uuid4())))
    [s] = [s for s in exporter.get_finished_spans() if s.name == "llm"]
    assert not s.status.is_ok and s.attributes["gen_ai.request.model"] == "fast"
