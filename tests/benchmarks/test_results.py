"""benchmarks/harness/results.py: the one ``finish`` every driver ends with, and the run folder's name."""

from __future__ import annotations

import argparse
import json
import re

from benchmarks.harness import results


def test_finish_stamps_saves_prints_and_returns(tmp_path, capsys):
    result = results.finish({"rows": [[1, 2.5]]}, "demo", argparse.Namespace(n=3), table="| a | b |\n",
                            out=tmp_path)
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved == result
    assert saved["kind"] == saved["label"] == "demo" and saved["config"] == {"n": 3}
    assert saved["table"] == "| a | b |\n" and saved["rows"] == [[1, 2.5]]
    assert saved["commit"] and saved["machine"] and saved["cpu"] and re.match(r"\d{4}-\d\d-\d\dT", saved["date"])
    printed = capsys.readouterr().out
    assert "| a | b |" in printed and str(tmp_path / "demo.json") in printed


def test_finish_writes_a_named_json_file_as_given(tmp_path):
    results.finish({}, "demo", {}, out=tmp_path / "sub" / "other.json", label="x")
    assert json.loads((tmp_path / "sub" / "other.json").read_text())["label"] == "x"


def test_the_default_folder_is_date_machine_commit(monkeypatch):
    monkeypatch.setenv("DFAST_BENCH_MACHINE", "box-9")
    folder = results.run_dir()
    assert folder.parent == results.RESULTS
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-box-9-" + re.escape(results.commit()), folder.name)
    assert results.result_path(None, "k") == folder / "k.json"


def test_markdown_table_rounds_floats_by_size():
    assert results.markdown_table(["a", "b", "c"], [[1.234, 123.4, None]]) == "| a | b | c |\n|---|---|---|\n| 1.23 | 123 | n/a |\n"
