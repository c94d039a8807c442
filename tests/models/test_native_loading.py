"""``source: llada`` / ``dream`` load the native code, ``*-remote`` the checkpoint's own code; layouts
the native code does not know are refused with the option to use; tokenizers load without remote code."""

from __future__ import annotations

import json

import pytest

from dfast_serve.models import registry
from dfast_serve.models.checkpoint import UnsupportedCheckpoint
from dfast_serve.models.native import load_native_diffusion, load_tokenizer
from tests.models.checkpoints import make_checkpoint


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_source_names_the_native_code_with_batching_and_cache(tmp_path, family):
    model = registry.load_model(name="m", engine="diffusion", source=family, path=str(make_checkpoint(family, tmp_path)),
                                device="cpu")
    assert model.padded_batches and model.kv_cache and model.kind == family
    assert model.shift_logits == (family == "dream") and model.mask_token_id == 500 and 1 in model.eos_token_ids
    assert model.encode_chat([{"role": "user", "content": "t7"}]) == [3, 7, 4, 5]  # the checkpoint's chat template


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_remote_source_keeps_the_remote_code_path(monkeypatch, family):
    calls = []
    monkeypatch.setattr(registry, "load_hub_diffusion", lambda path, kind, name, **kw: calls.append((path, kind)))
    registry.load_model(name="m", engine="diffusion", source=f"{family}-remote", path="some/dir", device="cpu")
    assert calls == [("some/dir", family)]


@pytest.mark.parametrize("family, change, says", [
    ("llada", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "LlamaForCausalLM"),
    ("llada", {"block_type": "sequential"}, "block_type"),
    ("llada", {"alibi": True, "rope": False}, "rope"),
    ("dream", {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "Qwen2ForCausalLM"),
    ("dream", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
])
def test_unknown_config_is_refused_naming_the_remote_source(tmp_path, family, change, says):
    directory = make_checkpoint(family, tmp_path)
    edit_config(directory, **change)
    with pytest.raises(UnsupportedCheckpoint, match=f"(?s){says}.*source: {family}-remote"):
        load_native_diffusion(str(directory), family, "m")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_missing_or_foreign_weights_are_refused_naming_the_remote_source(tmp_path, family):
    from safetensors.torch import load_file, save_file

    directory = make_checkpoint(family, tmp_path)
    weights = load_file(str(directory / "model.safetensors"))
    dropped = next(k for k in weights if "up_proj" in k)
    del weights[dropped]
    save_file(weights, str(directory / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpoint, match=f"(?s)missing.*up_proj.*source: {family}-remote"):
        load_native_diffusion(str(directory), family, "m")
    other = "dream" if family == "llada" else "llada"  # the other family's layout under this family's config
    save_file(load_file(str(make_checkpoint(other, tmp_path / "other") / "model.safetensors")),
              str(directory / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpoint, match=f"unknown.*source: {family}-remote"):
        load_native_diffusion(str(directory), family, "m")


def test_a_remote_code_tokenizer_loads_from_tokenizer_json_or_its_stand_in_or_fails_clearly(tmp_path):
    directory = make_checkpoint("dream", tmp_path)  # its tokenizer_config asks for DreamTokenizer (auto_map)
    assert load_tokenizer(directory, "dream-remote").encode("t7 t8") == [7, 8]
    (directory / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedCheckpoint, match="tokenizer needs remote code.*source: dream-remote"):
        load_tokenizer(directory, "dream-remote")
    # Dream's real files: vocab.json + merges.txt for a Qwen2-style byte-level BPE
    (directory / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|eos|>": 3}))
    (directory / "merges.txt").write_text("#version: 0.2\na b\n")
    tokenizer = load_tokenizer(directory, "dream-remote")
    assert type(tokenizer).__name__.startswith("Qwen2Tokenizer") and tokenizer.encode("ab") == [2]
