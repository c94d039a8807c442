"""The pure parts of benchmarks/peers/vs_dlmserve.py (no dlmserve, no server)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.peers import vs_dlmserve
from benchmarks.harness.metrics import ChunkEvent, RequestRecord
from benchmarks.harness.client import BenchConfig, request_body

METRICS = """# HELP dlmserve_denoising_step_duration_seconds Wall-clock time per denoising step across the full batch
# TYPE dlmserve_denoising_step_duration_seconds histogram
dlmserve_denoising_step_duration_seconds_bucket{le="0.01"} 0.0
dlmserve_denoising_step_duration_seconds_count 128.0
dlmserve_denoising_step_duration_seconds_sum 6.4
dlmserve_step_batch_size_count 128.0
"""


def test_step_counter_reads_dlmserve_step_histogram() -> None:
    assert vs_dlmserve.step_counter(METRICS) == (128.0, 6.4)
    assert vs_dlmserve.step_counter("") == (0.0, 0.0)


def test_figures_divide_total_time_by_passes() -> None:
    record = RequestRecord(start=0.0, chunks=[ChunkEvent(0.5, "", 1), ChunkEvent(1.0, "hi", 32), ChunkEvent(3.2, " there", 64)],
                           end=3.2)
    ours = vs_dlmserve.figures([record])  # passes from the stream
    assert ours["passes"] == 64 and abs(ours["ms_per_pass_p50"] - 50.0) < 1e-9 and abs(ours["ttft_ms_p50"] - 1000.0) < 1e-9
    theirs = vs_dlmserve.figures([RequestRecord(start=0.0, chunks=[ChunkEvent(1.6, "all", None)], end=1.6)], passes=32)
    assert abs(theirs["ms_per_pass_p50"] - 50.0) < 1e-9 and theirs["passes"] == 32
    failed = vs_dlmserve.figures([RequestRecord(start=0.0, error="HTTP 400: no", end=0.1)])
    assert failed["ok"] == 0 and failed["ms_per_pass_p50"] is None and failed["errors"] == ["HTTP 400: no"]


def test_dlmserve_body_has_no_field_it_rejects() -> None:
    body = request_body(vs_dlmserve.dlm_config("http://x", Path("/ck"), 64, 64), "hello")
    assert "stream_options" not in body  # dlmserve forbids unknown fields (400)
    assert body["model"] == "/ck" and body["num_denoising_steps"] == 64 and body["max_tokens"] == 64
    assert "stream_options" in request_body(BenchConfig(model="m"), "hello")


def test_checkpoint_speaks_llada_ids_and_carries_the_remote_code(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    remote = tmp_path / "remote"
    remote.mkdir()
    for name in vs_dlmserve.REMOTE_FILES:
        (remote / name).write_text("# stand-in\n")
    ckpt = vs_dlmserve.write_checkpoint(tmp_path / "ck", remote, hidden=16, layers=1, heads=2, mlp=32)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["vocab_size"] == 126464 and config["mask_token_id"] == 126336 and "AutoModel" in config["auto_map"]
    assert all((ckpt / name).exists() for name in vs_dlmserve.REMOTE_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    assert tokenizer.convert_tokens_to_ids("<|mdm_mask|>") == 126336 and tokenizer.pad_token_id != 126336
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_skips_cleanly_without_dlmserve(tmp_path: Path, capsys) -> None:
    assert vs_dlmserve.main(["--dlm-venv", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) is None
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_sampler_ops_and_top_ops_report_milliseconds(monkeypatch) -> None:
    import torch

    # a fake clock: each op's three samples take 3 ms, 1 ms and 2 ms, so its median is 2 ms exactly
    durations = iter([0.003, 0.001, 0.002] * 7)
    now = [0.0]
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] % 2 == 0:  # the second reading of a sample: the op "took" its duration
            now[0] += next(durations)
        return now[0]

    monkeypatch.setattr(vs_dlmserve, "time", SimpleNamespace(perf_counter=clock))
    ops = vs_dlmserve.sampler_ops(rows=4, vocab=50, reps=3)
    monkeypatch.undo()
    assert {"argmax bf16", "max(-1) bf16 (values and indices)", "softmax float32"} <= set(ops)
    assert len(ops) == 7 and calls[0] == 2 * 3 * 7
    assert ops == pytest.approx({name: 2.0 for name in ops})
    top = vs_dlmserve.top_ops(lambda: torch.ones(8, 8) @ torch.ones(8, 8), passes=2, count=3)
    assert top and len(top) <= 3 and {"op", "ms_per_pass", "calls"} <= set(top[0])
