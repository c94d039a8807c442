"""`serve build` on dfast_serve.serve.default_app:app writes a deployable Serve config (no cluster:
serve build only imports the module), from the embedded defaults or from a config file named by
DFASTLLM_SERVE_CONFIG; the API key stays out of the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from dfast_serve.serve.config_file import load_serve_config

ROOT = Path(__file__).resolve().parents[2]
IMPORT_PATH = "dfast_serve.serve.default_app:app"


def serve_build(tmp_path: Path, **env: str) -> dict:
    out = tmp_path / "built.yaml"
    serve_bin = Path(sys.executable).with_name("serve")
    result = subprocess.run([str(serve_bin), "build", IMPORT_PATH, "-o", str(out)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return yaml.safe_load(out.read_text())


def test_serve_build_on_the_default_app(tmp_path):
    built = serve_build(tmp_path)
    (app,) = built["applications"]
    assert app["import_path"] == IMPORT_PATH
    assert {d["name"] for d in app["deployments"]} == {"Ingress", "DiffusionReplica", "ARReplica"}


def test_serve_build_from_the_cluster_config_keeps_placement_and_hides_the_key(tmp_path):
    key_file = tmp_path / "api_key"
    key_file.write_text("built-key-must-not-leak")
    config = load_serve_config(ROOT / "serve_config.cluster.yaml",
                               [f"applications.dfast_serve.args.api_key_file={key_file}"])
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    built = serve_build(tmp_path, DFASTLLM_SERVE_CONFIG=str(config_path))
    deployments = {d["name"]: d for d in built["applications"][0]["deployments"]}
    assert deployments["Ingress"]["num_replicas"] == 2
    replica = deployments["DiffusionReplica"]
    assert replica["ray_actor_options"]["accelerator_type"] == "A100-40G"
    assert replica["autoscaling_config"]["policy"]["policy_function"] == "dfast_serve.serve.autoscaling:TTFTPolicy"
    assert "built-key-must-not-leak" not in (tmp_path / "built.yaml").read_text()
