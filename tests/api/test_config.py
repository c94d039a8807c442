"""Server configuration rules that keep the server safe: the API key, and an upper bound on every number."""

from __future__ import annotations

import typing

import pytest
from annotated_types import Le, Lt
from pydantic import BaseModel, ValidationError

from dfast_serve.config import ReplicaConfig, RouterConfig, ServerConfig, load_server_config

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


@pytest.mark.parametrize("model", [ServerConfig, ReplicaConfig, RouterConfig])
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

    args = application(load_serve_config(Path(__file__).resolve().parents[2] / name))["args"]
    assert [m["replica"]["batch_invariance"] for m in args["models"]] == ["off"] * len(args["models"])
    assert all(ReplicaConfig.model_validate(m["replica"]).batch_invariance == "off" for m in args["models"])
