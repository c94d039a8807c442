"""Smoke test: benchmarks.engine.bf16_agreement runs both modes on bf16 tiny-mdlm and writes its JSON; strict agrees."""

from __future__ import annotations

import json

from benchmarks.engine.bf16_agreement import main


def test_bf16_agreement_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bf16.json"
    main(["--prompts", "3", "--max-tokens", "8", "--rounds", "1", "--skip-ar", "--diffusion-options", "ultra",
          "--save-result", str(out)])
    assert "| model | options | mode |" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    strict = results["tiny-mdlm-ultra-strict"]
    assert strict["total"] == 3 * 2 + 3 and strict["agreement"] == 1.0  # groups of 2 (2 + 1), of 4 (3), all (3)
    assert set(results["tiny-mdlm-ultra-cost"]) == {"off", "strict", "batch1"}
