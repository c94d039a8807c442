"""Smoke test: benchmarks.engine.decoding compares variants in-process on the embedded tiny-mdlm and writes its JSON."""

from __future__ import annotations

import json

from benchmarks.engine.decoding import HEADER, main


def test_decoding_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "decoding.json"
    main(["--max-tokens", "8", "--num-prompts", "2", "--warmup", "0", "--threshold", "0.5",
          "--variants", "standard", "threshold", "threshold+dual", "--save-result", str(out)])
    assert "| max tokens | variant |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kind"] == "decoding" and result["header"] == HEADER
    (_, standard, *_, no_agree), (_, uncached, *_), (_, cached, *_, agree) = result["rows"]
    assert (standard, uncached, cached, no_agree) == ("standard", "threshold", "threshold+dual", None)
    run, reference = result["runs"]["threshold+dual@8"], result["runs"]["threshold@8"]
    assert run["options"]["cache"] == "dual" and reference["options"]["cache"] == "none"
    assert run["options"]["threshold"] == reference["options"]["threshold"] == 0.5
    # the agreement is counted against the uncached run's texts, prompt by prompt
    same = sum(a == b for a, b in zip(run["generated_texts"], reference["generated_texts"]))
    assert len(run["generated_texts"]) == len(reference["generated_texts"]) == 2
    assert agree == f"{same}/2" and run["agrees_without_cache"] == same / 2
    assert "agrees_without_cache" not in reference
    assert run["completed"] == 2 and run["mean_tpf"] > 0
