"""Loading the server's config from the builder's args and the environment (the API key's sources)."""

from __future__ import annotations

import os
from typing import Any, Mapping

from dfast_serve.config.diffusion import ENV_PREFIX
from dfast_serve.config.server import ServerConfig


def load_server_config(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Validate the builder args and fill ``api_key`` when the args leave it out.

    Key sources, first wins: ``args.api_key``, the file ``args.api_key_file``, ``DFASTLLM_API_KEY``,
    the file ``DFASTLLM_API_KEY_FILE``. A file is read here, in the process that builds the app; its
    path is all that the args (and so ``serve config``) show. Set but empty, the variable (or file)
    is an error like an empty ``api_key``, not a server without auth. With ``require_api_key`` a
    missing key is an error here, so the application fails to deploy (``serve status``:
    DEPLOY_FAILED with this message) instead of serving without auth.
    """
    env = os.environ if environ is None else environ
    data = dict(args)
    if data.get("api_key") is None:
        data["api_key"] = _api_key_from(data.get("api_key_file"), env)
    config = ServerConfig.model_validate(data)
    if config.require_api_key and not config.key_sha256:
        raise ValueError(
            f"require_api_key is true but no API key reached the application: set args.api_key_file, or "
            f"{ENV_PREFIX}API_KEY(_FILE) in the application's runtime_env.env_vars (a variable exported in the shell "
            f"of a `serve run` that attaches to a running cluster does not reach it)"
        )
    return config


def _api_key_from(args_file: str | None, env: Mapping[str, str]) -> str | None:
    if args_file:
        return _read_key_file(args_file, "api_key_file")
    if env.get(ENV_PREFIX + "API_KEY") is not None:
        return env[ENV_PREFIX + "API_KEY"]
    if env.get(ENV_PREFIX + "API_KEY_FILE"):
        return _read_key_file(env[ENV_PREFIX + "API_KEY_FILE"], ENV_PREFIX + "API_KEY_FILE")
    return None


def _read_key_file(path: str, source: str) -> str:
    try:
        key = open(os.path.expanduser(path), encoding="utf-8").read().strip()
    except OSError as err:
        raise ValueError(f"{source}: cannot read the API key file {path!r}: {err.strerror}") from None
    if not key:
        raise ValueError(f"{source}: the API key file {path!r} is empty")
    return key
