"""Smoke test: benchmarks.engine.diffusion_gemma times ours and transformers' generate on the tiny random model."""

from __future__ import annotations

import json

from benchmarks.engine.diffusion_gemma import main


def test_diffusion_gemma_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "gemma.json"
    main(["--canvas-length", "8", "--steps", "3", "--max-tokens", "12", "--seeds", "1", "--save-result", str(out)])
    assert "| variant | first text ms |" in capsys.readouterr().out
    summary = json.loads(out.read_text())["summary"]
    for name in ("transformers generate + streamer", "ours, standard", "ours, ultra-fast"):
        row = summary[name]
        # a canvas is text after its 3 passes; every step drafts, from the first
        assert row["first_text_passes"] == 3 and row["first_draft_passes"] == 1, (name, row)
    assert summary["ours, standard"]["tokens"] == 12 and summary["ours, standard"]["passes"] == 6
    assert summary["transformers generate + streamer"]["tokens"] == 16  # whole canvases: it does not cut at 12
