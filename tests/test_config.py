"""The configuration tree (``config.py``, no Ray): diffusion options resolved in one place, an API key
that is required cannot go missing silently, keys no header can carry are refused, and every number
has an upper bound."""

from __future__ import annotations

import typing

import pytest
from annotated_types import Le, Lt
from pydantic import BaseModel, ValidationError

from dfast_serve.config import (DiffusionOptions, ReplicaConfig, RouterConfig, ServedModelConfig, ServerConfig,
                                load_server_config)
from dfast_serve.config.vllm import REPO_VLLM_PYTHON, VLLM_PYTHON_ENV, VLLMOptions

DIFFUSION = {"name": "tiny-mdlm", "engine": "diffusion"}
AR = {"name": "smollm2-135m", "engine": "ar"}


def test_each_diffusion_model_resolves_env_then_server_switches_then_its_own_section():
    args = {"models": [{**DIFFUSION, "diffusion": {"ultra_fast_config": {"early_stop_confidence": 0.99}}}, AR],
            "ultra_fast": {"stream_confidence_threshold": 0.7, "early_stop_confidence": 0.5}}
    env = {"DFASTLLM_STREAM_CONFIDENCE_THRESHOLD": "0.6", "DFASTLLM_EARLY_STOP_CONFIDENCE": "0.9",
           "DFASTLLM_INSTANT_FIRST_TOKEN": "false"}
    resolved = load_server_config(args, environ={}).resolve_diffusion(environ=env)
    assert set(resolved) == {"tiny-mdlm"}  # AR models have none
    options = resolved["tiny-mdlm"].ultra_fast_config
    assert options.enable_instant_first_token is False  # env, nothing above it
    assert options.stream_confidence_threshold == 0.7  # server switch over env
    assert options.early_stop_confidence == 0.99  # the model's section over the switches and env
    assert load_server_config({"models": [DIFFUSION]}, environ={}).resolve_diffusion(environ={}) == \
        {"tiny-mdlm": DiffusionOptions()}


def test_a_bad_configured_or_env_value_fails_at_start():
    config = load_server_config({"models": [{**DIFFUSION, "diffusion": {"block_length": "32"}}]}, environ={})
    with pytest.raises(ValidationError, match="block_length"):
        config.resolve_diffusion(environ={})  # strict, as requests are: "32" is not an integer
    with pytest.raises(ValueError, match="STREAM_CONFIDENCE_THRESHOLD|stream_confidence_threshold"):
        load_server_config({"models": [DIFFUSION]}, environ={}).resolve_diffusion(
            environ={"DFASTLLM_STREAM_CONFIDENCE_THRESHOLD": "7"})


def test_a_required_api_key_that_never_arrived_stops_the_start():
    args = {"models": [AR], "require_api_key": True}
    with pytest.raises(ValueError, match="DFASTLLM_API_KEY.*runtime_env.env_vars"):
        load_server_config(args, environ={})
    assert load_server_config(args, environ={"DFASTLLM_API_KEY": "k"}).api_key == "k"
    assert load_server_config({**args, "api_key": "file"}, environ={}).api_key == "file"
    assert load_server_config({"models": [AR]}, environ={}).api_key is None  # not required: open is allowed


MODELS = {"models": [{"name": "m", "engine": "ar"}]}


@pytest.mark.parametrize("key", ["", " secret", "secret\t", "sec\nret", "sec\x7fret"])
def test_keys_that_no_header_can_carry_are_refused(key):
    with pytest.raises(ValidationError) as info:
        load_server_config({**MODELS, "api_key": key}, environ={})
    assert info.value.errors()[0]["loc"] == ("api_key",)


def test_an_empty_key_in_the_environment_is_refused_not_ignored():
    with pytest.raises(ValidationError):
        load_server_config(MODELS, environ={"DFASTLLM_API_KEY": ""})


@pytest.mark.parametrize("args", [
    {**MODELS, "api_key": 8675309},  # wrong type
    {**MODELS, "api_key": "8675309 "},  # refused by our validator
    {"models": [{"name": "m", "engine": "ar"}, {"name": "m", "engine": "ar"}], "api_key": "8675309"},  # model error
    {**MODELS, "api_key": "8675309", "max_body_bytes": -1},  # another field's error
])
def test_no_config_error_shows_the_key(args):
    with pytest.raises(ValidationError) as info:
        load_server_config(args, environ={})
    assert "8675309" not in str(info.value) and "8675309" not in repr(info.value)


def test_a_valid_config_does_not_show_the_key_either():
    config = load_server_config({**MODELS, "api_key": "cl\u00e9 8675309"}, environ={})
    assert config.api_key == "cl\u00e9 8675309" and "8675309" not in repr(config) and "8675309" not in str(config)


def _numeric_fields(model: type[BaseModel]):
    for name, field in model.model_fields.items():
        kinds = {a for a in typing.get_args(field.annotation) or (field.annotation,) if a is not type(None)}
        if kinds <= {int, float} and kinds:
            yield name, field


@pytest.mark.parametrize("model", [ServerConfig, ReplicaConfig, RouterConfig, VLLMOptions])
def test_every_number_has_an_upper_bound_that_is_enforced(model):
    fields = dict(_numeric_fields(model))
    assert fields
    for name, field in fields.items():
        bound = next((m.le if isinstance(m, Le) else m.lt for m in field.metadata if isinstance(m, (Le, Lt))), None)
        assert bound is not None, f"{model.__name__}.{name} has no upper bound"
        data = {**MODELS, name: bound * 2 + 1} if model is ServerConfig else {name: bound * 2 + 1}
        with pytest.raises(ValidationError) as info:
            model.model_validate(data)
        assert info.value.errors()[0]["loc"] == (name,)


def test_the_removed_batch_invariant_only_key_names_its_replacement():
    with pytest.raises(ValidationError, match="replaced by replica.batch_invariance"):
        ReplicaConfig.model_validate({"batch_invariant_only": True})
    assert ReplicaConfig().batch_invariance == "off"
    assert ReplicaConfig.model_validate({"batch_invariance": False}).batch_invariance == "off"  # YAML's unquoted off
    for wrong in ("on", True):
        with pytest.raises(ValidationError, match="'off' or 'strict'"):
            ReplicaConfig.model_validate({"batch_invariance": wrong})


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cluster.yaml"])
def test_the_shipped_configs_batch_every_dtype(name):
    from pathlib import Path

    from dfast_serve.serve.config_file import application, load_serve_config

    args = application(load_serve_config(Path(__file__).resolve().parents[1] / name))["args"]
    ours = [m for m in args["models"] if m["engine"] != "vllm"]  # vLLM batches by its own rules
    assert ours and [m["replica"]["batch_invariance"] for m in ours] == ["off"] * len(ours)
    assert all(ReplicaConfig.model_validate(m["replica"]).batch_invariance == "off" for m in ours)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_remote_code_from_the_hub_must_be_pinned_to_a_commit():
    remote = {"name": "llada", "engine": "diffusion", "source": "llada-remote", "path": "GSAI-ML/LLaDA-8B-Instruct"}
    with pytest.raises(ValidationError, match="pin the hub id"):
        ServerConfig(models=[remote])
    assert ServerConfig(models=[{**remote, "revision": COMMIT}]).models[0].revision == COMMIT
    with pytest.raises(ValidationError, match="revision"):
        ServerConfig(models=[{**remote, "revision": "main"}])  # a branch moves: only a commit pins the code
    for local in ("/models/LLaDA", "./ckpt", "~/ckpt"):  # a directory on the node is what was put there
        ServerConfig(models=[{**remote, "path": local}])
    ServerConfig(models=[{**remote, "source": "llada"}])  # native code runs no remote code: no pin required


def test_an_ar_budget_must_exceed_the_running_decodes():
    from dfast_serve.config.models import ServedModelConfig

    replica = {"step_token_budget": 64, "max_ongoing_requests": 64, "max_canvas_tokens": 64}
    with pytest.raises(ValidationError, match="must exceed replica.max_ongoing_requests"):
        ServedModelConfig.model_validate({**AR, "replica": replica})
    ServedModelConfig.model_validate({**DIFFUSION, "replica": replica})  # canvas tokens: no such rule
    ServedModelConfig.model_validate({**AR, "replica": {**replica, "max_ongoing_requests": 63}})
    assert ReplicaConfig().max_running_tokens == 8 * 8192
    assert ReplicaConfig.model_validate({"max_running_tokens": None}).max_running_tokens is None


VLLM = {"name": "smollm2-vllm", "engine": "vllm"}


def test_vllm_engine_takes_causal_lms_and_its_own_options_only():
    assert ServedModelConfig.model_validate({**VLLM, "source": "hf", "path": "org/m"}).kind == "ar"
    assert ServedModelConfig.model_validate(VLLM).vllm == VLLMOptions()  # filled with the defaults
    with pytest.raises(ValidationError, match="is a diffusion model"):
        ServedModelConfig.model_validate({**VLLM, "source": "llada", "path": "/m"})
    with pytest.raises(ValidationError, match="apply to engine: vllm"):
        ServedModelConfig.model_validate({**AR, "vllm": {"enforce_eager": True}})
    with pytest.raises(ValidationError, match="diffusion options apply"):
        ServedModelConfig.model_validate({**VLLM, "diffusion": {"block_length": 8}})
    with pytest.raises(ValidationError, match="vllm.max_model_lenn|max_model_lenn"):
        ServedModelConfig.model_validate({**VLLM, "vllm": {"max_model_lenn": 8}})


def test_vllm_gpus_match_the_replica():
    gpus = {"replica": {"num_gpus": 2}}
    assert ServedModelConfig.model_validate({**VLLM, **gpus, "vllm": {"tensor_parallel_size": 2}}).vllm.tensor_parallel_size == 2
    with pytest.raises(ValidationError, match="must equal replica.num_gpus"):
        ServedModelConfig.model_validate({**VLLM, **gpus})
    with pytest.raises(ValidationError, match="must equal replica.num_gpus"):
        ServedModelConfig.model_validate({**VLLM, "vllm": {"tensor_parallel_size": 2}})
    shared = ServedModelConfig.model_validate({**VLLM, "replica": {"num_gpus": 0.5}})  # two replicas on one GPU
    assert shared.vllm.tensor_parallel_size == 1


def test_vllm_refuses_the_replica_fields_of_our_own_engines():
    """They would be silently ignored: vLLM batches and budgets by its own options."""
    with pytest.raises(ValidationError, match="replica.batch_invariance, replica.step_token_budget configure"):
        ServedModelConfig.model_validate({**VLLM, "replica": {"step_token_budget": 4096, "batch_invariance": "strict"}})
    accepted = ServedModelConfig.model_validate({**VLLM, "replica": {"max_ongoing_requests": 16}})
    assert ServedModelConfig.model_validate(accepted.model_dump()) == accepted  # the ingress re-validates a dump
    with pytest.raises(ValidationError, match="quantization needs a GPU"):
        ServedModelConfig.model_validate({**VLLM, "vllm": {"quantization": "awq"}})


def test_vllm_interpreter_is_the_config_then_the_env_then_this_tree():
    assert VLLMOptions(python="/opt/v/bin/python").interpreter({VLLM_PYTHON_ENV: "/e/python"}) == "/opt/v/bin/python"
    assert VLLMOptions().interpreter({VLLM_PYTHON_ENV: "/e/python"}) == "/e/python"
    assert VLLMOptions().interpreter({}) == str(REPO_VLLM_PYTHON)


def test_vllm_engine_args_pass_only_what_is_set():
    args = VLLMOptions(max_num_batched_tokens=512).engine_args("/m", "name", "float32", None, 8)
    assert args["max_num_batched_tokens"] == 512 and args["max_num_seqs"] == 8 and args["served_model_name"] == ["name"]
    assert "enable_prefix_caching" not in args  # vLLM's default stands
    assert VLLMOptions(enable_prefix_caching=False).engine_args("/m", "n", "auto", None, 1)["enable_prefix_caching"] is False
