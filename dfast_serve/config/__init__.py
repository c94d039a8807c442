"""The one configuration tree of dfast_serve, and the one place environment variables are read.

``server.py`` holds the tree (``ServerConfig`` and its router), ``models.py`` one served model and its
replicas, ``diffusion.py`` how diffusion options are layered (env < serve_config < request), and
``loading.py`` the API key's sources. A server resolves everything but the request layer once, in
``build_app`` (``ServerConfig.resolve_diffusion``); the ingress applies each request's ``dfast``
overrides on top.

Where the environment is read: ``build_app`` runs in a Ray task that the Serve controller starts
with the application's ``runtime_env``, so ``runtime_env.env_vars`` in serve_config.yaml (or the
Ray cluster's own environment) is what counts; a variable set in the shell of a ``serve run``
that attaches to an existing cluster never gets there.
"""

from dfast_serve.config.diffusion import (ENV_PREFIX, UltraFastSwitches, deep_merge, diffusion_env_overrides,
                                         resolve_diffusion_options)
from dfast_serve.config.loading import load_server_config
from dfast_serve.config.models import DIFFUSION_SOURCES, ModelConfig, ReplicaConfig, ServedModelConfig
from dfast_serve.config.server import RouterConfig, ServerConfig, is_loopback
from dfast_serve.wire.options import BatchInvariance, ConfidenceKind, DiffusionOptions, UltraFastConfig

__all__ = ["BatchInvariance", "ConfidenceKind", "DIFFUSION_SOURCES", "DiffusionOptions", "ENV_PREFIX", "ModelConfig",
           "ReplicaConfig", "RouterConfig", "ServedModelConfig", "ServerConfig", "UltraFastConfig", "UltraFastSwitches",
           "deep_merge", "diffusion_env_overrides", "is_loopback", "load_server_config", "resolve_diffusion_options"]
