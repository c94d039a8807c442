"""Smoke test: benchmarks.engine.decoding compares variants in-process on the embedded tiny-mdlm and writes its JSON."""

from __future__ import annotations

import json

from benchmarks.engine.decoding import HEADER, main


def test_decoding_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "decoding.json"
    main(["--max-tokens", "8", "--num-prompts", "2", "--warmup", "0", "--threshold", "0.5",
          "--variants", "standard", "threshold+dual", "--save-result", str(out)])
    assert "| max tokens | variant |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["kind"] == "decoding" and result["header"] == HEADER
    (_, standard, *_), (_, cached, *_, agree) = result["rows"]
    assert (standard, cached) == ("standard", "threshold+dual")
    assert agree.endswith("/2")  # compared with the uncached threshold run, made for the purpose
    run = result["runs"]["threshold+dual@8"]
    assert run["options"]["cache"] == "dual" and run["options"]["threshold"] == 0.5
    assert run["completed"] == 2 and run["mean_tpf"] > 0 and 0 <= run["agrees_without_cache"] <= 1
