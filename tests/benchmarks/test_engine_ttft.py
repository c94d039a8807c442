"""Smoke test: benchmarks.engine.ttft runs in-process on the embedded diffusion model and writes its JSON."""

from __future__ import annotations

import json

from benchmarks.engine.ttft import main
from benchmarks.harness.plots import plot_ttft_distributions

EXPECTED_KEYS = {
    "kind", "label", "date", "commit", "machine", "cpu", "host", "command", "config", "completed", "failed", "duration_s", "total_input_tokens",
    "total_output_tokens", "request_throughput", "output_throughput", "median_ttft_ms", "p90_ttft_ms",
    "p99_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "mean_nfe_ttft", "mean_nfe_total",
    "median_floor_ms", "median_canvas_pass_ms", "median_ttft_over_floor", "mean_tpf", "per_request", "generated_texts",
    "timeline",
}


def test_engine_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "ultra.json"
    main(["--engine", "diffusion", "--mode", "ultra", "--num-prompts", "2", "--max-tokens", "8",
          "--floor-repeats", "2", "--save-result", str(out), "--timeline", str(tmp_path / "timeline.png"),
          "--decoding", "threshold", "--threshold", "0.8", "--cache", "prefix"])
    assert "Engine Benchmark Result" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert EXPECTED_KEYS <= result.keys()
    assert result["completed"] == 2 and result["failed"] == 0 and result["label"] == "diffusion-ultra"
    assert result["mean_nfe_ttft"] >= 1 and result["median_floor_ms"] > 0
    options = result["config"]["diffusion_options"]
    assert (options["decoding"], options["threshold"], options["cache"]) == ("threshold", 0.8, "prefix")
    per = result["per_request"]
    assert per["tpf"] == [t / n for t, n in zip(per["output_tokens"], per["nfe_total"])] and result["mean_tpf"] > 0
    assert len(per["ttft_ms"]) == 2 and all(r > 0 for r in per["ttft_over_floor"])
    assert set(result["timeline"]) == {"ultra", "standard"}
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert plot_ttft_distributions([result, result], tmp_path / "ttft.png").stat().st_size > 0
