"""Smoke test: benchmarks.engine.sampling_cost times propose on every case and writes its JSON."""

from __future__ import annotations

import json

from benchmarks.engine.sampling_cost import CASES, main


def test_sampling_cost_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "sampling_cost.json"
    main(["--scale", "0.01", "--repeats", "1", "--save-result", str(out)])
    assert "| case | positions × vocab |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {case[0] for case in CASES}
    for case in result["cases"].values():
        assert case["seconds_p50"] > 0 and case["logits_per_canvas_token"] > 0
        assert case["largest_tensor_mb"] <= max(case["input_mb"], result["chunk_elements"] * 8 / 2**20)
    assert result["forward"]["seconds_per_token"] > 0
