"""Which Host names the router answers and what key it holds (``config.ServerConfig``, ``api/host_check.py``).
The middleware in the ingress's app is tested in ``tests/serve/test_ingress.py``; through Ray's proxy in
``tests/serve/test_hardening.py`` (a keyless loopback server refuses a page's Host)."""

from __future__ import annotations

import pytest

from dfast_serve.api.host_check import host_name
from dfast_serve.config import ServerConfig, is_loopback
from dfast_serve.config.server import key_digest

MODELS = [{"name": "tiny-mdlm", "engine": "diffusion"}]


@pytest.mark.parametrize("header, name", [("127.0.0.1:8000", "127.0.0.1"), ("localhost", "localhost"),
                                          ("[::1]:8000", "::1"), ("[::1]", "::1"), ("example.com:80", "example.com"),
                                          ("::1", "::1")])
def test_the_host_name_drops_the_port(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"])
def test_loopback_names(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1.evil.example", "localhost.evil.example", "evil.example", "10.0.0.1",
                                  "0.0.0.0", "", "1270.0.0.1"])
def test_names_that_only_look_local_are_not_loopback(host):
    assert not is_loopback(host)


def test_a_keyless_server_answers_loopback_names_only_unless_told():
    keyless = ServerConfig(models=MODELS)
    assert keyless.host_allowed("127.0.0.1") and keyless.host_allowed("localhost")
    assert not keyless.host_allowed("evil.example")
    assert ServerConfig(models=MODELS, api_key="k").host_allowed("evil.example")  # the page cannot know the key
    assert ServerConfig(models=MODELS, allow_unauthenticated=True).host_allowed("my-gpu-box")
    listed = ServerConfig(models=MODELS, allowed_hosts=["My-Box"])
    assert listed.host_allowed("my-box") and not listed.host_allowed("127.0.0.1")  # the list replaces the default
    assert ServerConfig(models=MODELS, allowed_hosts=["*"]).host_allowed("anything")


def test_the_router_gets_the_keys_digest_never_the_key():
    config = ServerConfig(models=MODELS, api_key="sekrit", api_key_file=None)
    router = config.for_router()
    assert "sekrit" not in repr(router) and router["api_key_sha256"] == key_digest("sekrit")
    assert ServerConfig.model_validate(router).key_sha256 == key_digest("sekrit")
    only_digest = ServerConfig(models=MODELS, api_key_sha256=key_digest("sekrit"))
    assert only_digest.key_sha256 == key_digest("sekrit") and only_digest.for_router()["api_key_sha256"]
    with pytest.raises(ValueError, match="different keys"):
        ServerConfig(models=MODELS, api_key="sekrit", api_key_sha256=key_digest("other"))
    with pytest.raises(ValueError):
        ServerConfig(models=MODELS, api_key_sha256="not-hex")


def test_a_digest_alone_is_a_key_for_the_exposure_and_require_checks():
    from dfast_serve.config import load_server_config

    digest = key_digest("sekrit")
    ServerConfig(models=MODELS, api_key_sha256=digest).check_exposure("0.0.0.0")  # no error: a key is set
    with pytest.raises(ValueError, match="no API key"):
        ServerConfig(models=MODELS).check_exposure("0.0.0.0")
    assert load_server_config({"models": MODELS, "require_api_key": True, "api_key_sha256": digest},
                              environ={}).key_sha256 == digest
