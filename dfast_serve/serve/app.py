"""The application builder ``serve_config.yaml`` names: ``import_path: dfast_serve.serve.app:build_app``.

For ``serve run <config>`` the Serve controller runs ``build_app`` as a Ray task with the
application's ``runtime_env``, never in the ``serve run`` process: this is the one place the
``DFASTLLM_*`` environment is read (``runtime_env.env_vars``, or the Ray cluster's own
environment). It validates the whole config (a typo fails at start, naming the option), resolves
each diffusion model's options once, and composes one ``ModelReplica`` deployment per served model
(``VLLMReplica`` for ``engine: vllm``, started in vLLM's own Python environment) plus the ``Ingress``
with ``bind()``, passing the resolved options to both as arguments.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray.serve import Application, Deployment
from ray.serve.config import BackpressureConfig

from dfast_serve.config import ServerConfig, ServedModelConfig, load_server_config
from dfast_serve.serve.ingress import Ingress, proxy_host
from dfast_serve.config.vllm import VLLM_SETUP
from dfast_serve.serve.replicas import ModelReplica
from dfast_serve.serve.vllm_replica import VLLMReplica

HEAD_NODE_RESOURCE = "node:__internal_head__"


def replica_deployment_name(model: ServedModelConfig, config: ServerConfig) -> str:
    """``DiffusionReplica`` / ``ARReplica``; suffixed by the model name when several models are of its kind."""
    base = "DiffusionReplica" if model.kind == "diffusion" else "ARReplica"
    if sum(m.kind == model.kind for m in config.models) == 1:
        return base
    return f"{base}-{re.sub(r'[^A-Za-z0-9_-]', '_', model.name)}"


def router_actor_options(config: ServerConfig) -> dict[str, Any]:
    """The ingress never takes a GPU; with ``router.on_head`` it also asks for a sliver of Ray's
    ``node:__internal_head__`` resource, which only the head node has."""
    options: dict[str, Any] = {"num_cpus": config.router.num_cpus, "num_gpus": 0}
    if config.router.on_head:
        options["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    return options


def vllm_interpreter(model: ServedModelConfig) -> str:
    """The vLLM environment's python for ``model``'s replicas. The default one (this tree's .venv-vllm) must
    exist here; a path set in the config is the cluster's business (it names a path on the GPU nodes)."""
    assert model.vllm is not None
    python = model.vllm.interpreter()
    if model.vllm.python is None and not Path(python).exists():
        raise ValueError(f"model {model.name!r} has engine: vllm, but its environment {python} does not exist: run "
                         f"{VLLM_SETUP} (or set vllm.python / DFASTLLM_VLLM_PYTHON to a vLLM environment's python)")
    return python


def build_app(args: dict[str, Any]) -> Application:
    """The application ``args`` describe (Serve calls a builder with the args alone)."""
    return compose_app(args, ModelReplica)


def compose_app(args: dict[str, Any], replica_deployment: Deployment) -> Application:
    """The application, with ``replica_deployment`` as every model's replica (``ModelReplica``; tests
    pass a subclass that injects faults or paces passes)."""
    config = load_server_config(args)
    config.check_exposure(proxy_host())
    diffusion = config.resolve_diffusion()
    replicas = {}
    for model in config.models:
        options = model.replica.deployment_options()
        deployment = replica_deployment
        if model.engine == "vllm":
            deployment = VLLMReplica
            options["ray_actor_options"]["runtime_env"] = {"py_executable": vllm_interpreter(model)}
        deployment = deployment.options(name=replica_deployment_name(model, config), **options)
        replicas[model.name] = deployment.bind(model.model_dump(exclude={"replica", "diffusion"}),
                                               diffusion.get(model.name), model.replica.model_dump())
    ingress = Ingress.options(
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        max_queued_requests=config.router.max_queued_requests,
        # The proxy answers these itself (plain text): the ingress never sees them.
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        ray_actor_options=router_actor_options(config),
    )
    return ingress.bind(config.for_router(), replicas, diffusion)
