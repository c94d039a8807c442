"""``source: diffusion_gemma``: a checkpoint directory through the registry, and the serve_config example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dfast_serve.config import ModelConfig, ReplicaConfig
from dfast_serve.wire.options import DiffusionOptions
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, GemmaSampling
from dfast_serve.models.registry import load_model
from tests.gemma import CANVAS, STEPS, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_a_checkpoint_directory_loads_with_its_generation_config(tmp_path):
    path = tiny_checkpoint(tmp_path)
    model = load_model(name="g", engine="diffusion", source="diffusion_gemma", path=str(path))
    assert isinstance(model, DiffusionGemmaLM)
    assert model.canvas_length == CANVAS and model.eos_token_ids == frozenset({1})
    assert model.sampling == GemmaSampling(max_denoising_steps=STEPS)
    assert model.encode_chat([{"role": "user", "content": "t9"}]) == [3, 9, 4, 5]


def test_the_source_is_a_diffusion_model():
    with pytest.raises(ValidationError, match="set engine: diffusion"):
        ModelConfig(name="g", engine="ar", source="diffusion_gemma", path="x")


def test_the_commented_serve_config_example_is_valid():
    """The DiffusionGemma entry of serve_config.yaml, uncommented, passes the config's own validation."""
    lines = (ROOT / "serve_config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "# - name: diffusiongemma-26b" in line)
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        hash_at = line.index("#")
        block.append(line[:hash_at] + line[hash_at + 2 :])  # drop the leading "# ", keep inline comments
    entry = yaml.safe_load("\n".join(block))[0]
    replica, diffusion = entry.pop("replica"), entry.pop("diffusion")
    assert ModelConfig.model_validate(entry).source == "diffusion_gemma"
    assert ReplicaConfig.model_validate(replica).num_gpus == 1
    DiffusionOptions.model_validate(diffusion)
