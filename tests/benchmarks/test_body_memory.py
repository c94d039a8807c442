"""benchmarks/serving/body_memory.py end to end on small bodies: every shape measured, table and JSON written."""

from __future__ import annotations

import json

from benchmarks.serving.body_memory import main, worst_case_bodies


def test_every_shape_fits_its_size_and_is_reported(tmp_path, capsys):
    out = tmp_path / "body_memory.json"
    result = main(["--size", "4000", "--repeat", "1", "--save-result", str(out)])
    saved = json.loads(out.read_text())
    assert [r["body"] for r in saved["rows"]] == list(worst_case_bodies(4000))
    assert all(0 < r["bytes"] <= 4000 and r["peak_bytes"] > 0 for r in saved["rows"])
    assert saved["max_peak_per_body_byte"] == result["max_peak_per_body_byte"]
    assert "long_key_over_list" in capsys.readouterr().out
