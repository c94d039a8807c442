"""The GPU script in --smoke mode (tiny shapes, CPU): it builds the random-weight models, runs every
model and schedule, and writes its folder. Timing is not checked; the GPU itself cannot be here."""

from __future__ import annotations

import json

import torch

from benchmarks.gpu import LLADA_8B, main, random_llada, random_llama, SMOKE_AR, SMOKE_DIFFUSION
from dfast_serve.models.embedded import load_tiny_mdlm


def test_gpu_script_smoke_runs_every_model_and_writes_one_folder(tmp_path):
    results = main(["--smoke", "--out", str(tmp_path)])
    assert set(results) == {"tiny-mdlm-ultra-16", "tiny-mdlm-standard-16", "llada-8b-shaped-ultra-16",
                            "llada-8b-shaped-standard-16", "llama-8b-shaped-stream-16"}
    for result in results.values():
        assert result["completed"] == 2 and result["failed"] == 0
        assert result["median_floor_ms"] > 0
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert set(saved["figures"]) == set(results) and saved["environment"]["device"] in ("cpu", "cuda")
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| ") == 1 + len(results)  # header + one row per run
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
