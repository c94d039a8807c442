"""Secure defaults of the pool, without a cluster: where the API key comes from, that it never
shows in the args (what `serve config` prints), and that a server whose proxies listen beyond
loopback refuses to start without a key unless its args allow it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfast_serve.config import ServerConfig, load_server_config
from dfast_serve.serve import app as app_module
from dfast_serve.serve.config_file import application, load_serve_config

ROOT = Path(__file__).resolve().parents[2]
MODELS = [{"name": "tiny-mdlm", "engine": "diffusion"}]


def cluster_args() -> dict:
    return application(load_serve_config(ROOT / "serve_config.cluster.yaml"))["args"]


def test_key_comes_from_a_secret_file_named_in_args_or_env(tmp_path):
    secret = tmp_path / "api_key"
    secret.write_text("s3cret-from-file\n")
    assert load_server_config({"models": MODELS, "api_key_file": str(secret)}, environ={}).api_key == "s3cret-from-file"
    env = {"DFASTLLM_API_KEY_FILE": str(secret)}
    assert load_server_config({"models": MODELS}, environ=env).api_key == "s3cret-from-file"
    assert load_server_config({"models": MODELS}, environ={"DFASTLLM_API_KEY": "from-env"}).api_key == "from-env"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_key_file_is_a_start_up_error_naming_it(tmp_path, content):
    secret = tmp_path / "api_key"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ValueError, match="api_key_file: .*api_key"):
        load_server_config({"models": MODELS, "api_key_file": str(secret)}, environ={})


def test_the_key_is_never_printed(tmp_path):
    secret = tmp_path / "api_key"
    secret.write_text("never-print-me")
    config = load_server_config({"models": MODELS, "api_key_file": str(secret)}, environ={})
    assert "never-print-me" not in repr(config) and "never-print-me" not in str(config)


def test_cluster_config_names_a_key_file_and_no_key():
    args = cluster_args()
    assert args.get("api_key") is None and args["api_key_file"]
    assert not args.get("allow_unauthenticated")


def test_exposed_proxies_without_a_key_refuse_to_start(monkeypatch):
    monkeypatch.setattr(app_module, "proxy_host", lambda: "0.0.0.0")
    args = {**cluster_args(), "api_key_file": None, "require_api_key": False}  # the exposure rule alone
    with pytest.raises(ValueError, match="listen on 0.0.0.0 .* no API key"):
        app_module.build_app(args)
    app_module.build_app({**args, "allow_unauthenticated": True})  # the explicit opt-out
    app_module.build_app({**args, "api_key": "k"})


@pytest.mark.parametrize("host", [None, "127.0.0.1", "localhost", "::1"])
def test_loopback_or_no_serve_needs_no_key(host):
    ServerConfig.model_validate({"models": MODELS}).check_exposure(host)


def test_cluster_config_without_its_key_file_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match="api_key_file: cannot read"):
        load_server_config({**cluster_args(), "api_key_file": str(tmp_path / "missing")}, environ={})
    with pytest.raises(ValueError, match="require_api_key"):
        load_server_config({**cluster_args(), "api_key_file": None}, environ={})
