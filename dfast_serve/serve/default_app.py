"""An ``Application`` object for ``serve build`` / ``serve deploy`` (``dfast_serve.serve.default_app:app``).

``serve build`` accepts only an ``Application`` at its import path, not a builder function, so
this module builds one when imported. Its args are the first application's ``args`` of the Serve
config file named by ``DFASTLLM_SERVE_CONFIG`` (e.g. serve_config.cluster.yaml), or, without it,
the two embedded models with every other option at its default. The file is read wherever the
module is imported: on the machine that runs ``serve build``, and again by the Serve controller
when the generated config is deployed (set the variable there through the cluster's environment,
or deploy a config whose ``import_path`` is ``dfast_serve.serve.app:build_app`` with ``args``).
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from dfast_serve.serve.app import build_app
from dfast_serve.serve.config_file import application, load_serve_config

CONFIG_ENV = "DFASTLLM_SERVE_CONFIG"
DEFAULT_ARGS: dict[str, Any] = {
    "models": [{"name": "tiny-mdlm", "engine": "diffusion"}, {"name": "smollm2-135m", "engine": "ar"}],
}


def default_args() -> dict[str, Any]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        return DEFAULT_ARGS
    return application(load_serve_config(path), None).get("args") or {}


app: Application = build_app(default_args())
