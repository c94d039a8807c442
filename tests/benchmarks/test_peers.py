"""benchmarks/harness/peers.py without starting anything: the config copy a local server runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks.harness.peers import ROOT, config_copy, config_models
from benchmarks.serving.experiments import UNBATCHED_SUFFIX, unbatched_copy

SHIPPED = ROOT / "serve_config.yaml"


def test_the_copy_serves_on_loopback_with_models_added(tmp_path: Path) -> None:
    extra = unbatched_copy(SHIPPED, "tiny-mdlm")
    path, port = config_copy(SHIPPED, tmp_path, extra_models=[extra],
                             extra_apps=[{"name": "echo", "route_prefix": "/echo", "import_path": "x:app"}])
    config = yaml.safe_load(path.read_text())
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] == port > 0
    names = [m["name"] for m in config_models(path)]
    assert names == [m["name"] for m in config_models(SHIPPED)] + ["tiny-mdlm" + UNBATCHED_SUFFIX]
    assert extra["replica"]["max_batch_size"] == 1 and [a["name"] for a in config["applications"]][-1] == "echo"


def test_the_copy_can_replace_the_models(tmp_path: Path) -> None:
    entry = {"name": "only", "engine": "diffusion", "source": "embedded"}
    path, _ = config_copy(SHIPPED, tmp_path, models=[entry])
    assert config_models(path) == [entry]
    assert yaml.safe_load(path.read_text())["applications"][0]["args"].keys() == \
        yaml.safe_load(SHIPPED.read_text())["applications"][0]["args"].keys()  # the server settings are kept
