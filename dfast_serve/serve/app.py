"""The application builder ``serve_config.yaml`` names: ``import_path: dfast_serve.serve.app:build_app``.

It validates the whole config (so a typo fails at start with a message naming the option),
reads the ``DFASTLLM_*`` environment where ``serve run`` runs, and composes one replica
deployment per served model plus the router with ``bind()``.
"""

from __future__ import annotations

import re
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from dfast_serve.config import ServerConfig, ServedModelConfig, load_server_config
from dfast_serve.serve.replicas import ARReplica, DiffusionReplica
from dfast_serve.serve.router import Router

HEAD_NODE_RESOURCE = "node:__internal_head__"


def replica_deployment_name(model: ServedModelConfig, config: ServerConfig) -> str:
    """``DiffusionReplica`` / ``ARReplica``; suffixed by the model name when an engine serves several."""
    base = "DiffusionReplica" if model.engine == "diffusion" else "ARReplica"
    if sum(m.engine == model.engine for m in config.models) == 1:
        return base
    return f"{base}-{re.sub(r'[^A-Za-z0-9_-]', '_', model.name)}"


def router_actor_options(config: ServerConfig) -> dict[str, Any]:
    """The router never takes a GPU; with ``router.on_head`` it also asks for a sliver of Ray's
    ``node:__internal_head__`` resource, which only the head node has."""
    options: dict[str, Any] = {"num_cpus": config.router.num_cpus, "num_gpus": 0}
    if config.router.on_head:
        options["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    return options


def build_app(args: dict[str, Any]) -> Application:
    config = load_server_config(args)
    replicas = {}
    for model in config.models:
        deployment = DiffusionReplica if model.engine == "diffusion" else ARReplica
        options = model.replica.deployment_options()
        replicas[model.name] = deployment.options(name=replica_deployment_name(model, config), **options).bind(
            model.model_dump(exclude={"replica", "diffusion"}), config.diffusion_base(model), model.replica.model_dump()
        )
    router = Router.options(
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        max_queued_requests=config.router.max_queued_requests,
        # The proxy answers these itself (plain text): the router never sees them.
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        ray_actor_options=router_actor_options(config),
    )
    return router.bind(config.model_dump(), replicas)
