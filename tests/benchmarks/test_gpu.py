"""The GPU script in --smoke mode (tiny shapes, CPU): it builds the random-weight models, runs every
model and schedule and every cell of the native dLLM grid, and writes its folder. Timing is not
checked; the GPU itself cannot be here."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.gpu import (DREAM_7B, LLADA_8B, main, random_dream, random_llada, random_llama, SMOKE_AR,
                            SMOKE_DIFFUSION, SMOKE_DREAM)
from benchmarks.engine.native_grid import FULL_GRID, QUICK_GRID
from dfast_serve.models.embedded import load_tiny_mdlm


@pytest.fixture
def one_thread():
    """Tiny shapes run far faster on one thread than on two a loaded machine shares."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gpu_script_smoke_runs_every_model_and_writes_one_folder(tmp_path, one_thread):
    results = main(["--smoke", "--out", str(tmp_path)])
    engine_runs = {"tiny-mdlm-ultra-16", "tiny-mdlm-standard-16", "llama-8b-shaped-stream-16"}
    grid_runs = {f"{model}-{cell.label}" for model in ("llada-8b-shaped", "dream-7b-shaped") for cell in FULL_GRID}
    gemma_runs = {f"diffusiongemma-26b-shaped-{variant}" for variant in
                  ("transformers generate + streamer", "ours, standard", "ours, ultra-fast")}
    assert set(results) == engine_runs | grid_runs | gemma_runs
    for label in gemma_runs:  # 3 steps a canvas: text after 3 passes, a draft from the first
        assert results[label]["first_text_passes"] == 3 and results[label]["first_draft_passes"] == 1
    for label in engine_runs:
        assert results[label]["completed"] == 2 and results[label]["failed"] == 0
        assert results[label]["median_floor_ms"] > 0
    for label in grid_runs:
        assert results[label]["tokens_per_s"] > 0 and results[label]["tpf"] >= 1 and results[label]["floor_ms"] > 0
    assert {c.label for c in QUICK_GRID} <= {c.label for c in FULL_GRID}
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert set(saved["figures"]) == engine_runs and set(saved["grid"]) == grid_runs
    assert set(saved["diffusion_gemma"]) == gemma_runs
    assert saved["environment"]["device"] in ("cpu", "cuda")
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| ") == 3 + len(results)  # three headers + one row per run
    for png in ("ttft_16.png", "reveal_timeline.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_random_models_decode_with_the_embedded_tokenizer_at_full_output_width():
    tiny = load_tiny_mdlm()
    vocab = len(tiny.tokenizer)
    ids = torch.tensor([tiny.encode_prompt("In the beginning")])
    diffusion = random_llada(tiny, SMOKE_DIFFUSION, "cpu")
    assert diffusion.network.network.embed.num_embeddings == SMOKE_DIFFUSION["vocab_size"] > vocab
    assert diffusion.logits(ids).shape[-1] == vocab
    ar = random_llama(tiny, SMOKE_AR, "cpu")
    assert ar.network.lm_head.out_features == SMOKE_AR["vocab_size"] > vocab
    assert ar.network(input_ids=ids).logits.shape[-1] == vocab
    assert LLADA_8B["vocab_size"] == 126464  # LLaDA-8B's vocabulary, mask id 126336 included
    assert diffusion.padded_batches and diffusion.kv_cache and not diffusion.shift_logits
    dream = random_dream(tiny, SMOKE_DREAM, "cpu")
    assert dream.shift_logits and dream.padded_batches and dream.kv_cache
    assert dream.network.network.layers[0].k_proj.bias is not None and dream.logits(ids).shape[-1] == vocab
    assert (DREAM_7B["num_heads"], DREAM_7B["num_kv_heads"], DREAM_7B["vocab_size"]) == (28, 4, 152064)
