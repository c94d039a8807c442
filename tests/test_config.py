"""The configuration tree (no Ray): diffusion options resolved in one place, and an API key that is
required cannot go missing silently."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dfast_serve.config import DiffusionOptions, load_server_config

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
