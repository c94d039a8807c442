"""The whole server: its models, the router, the limits and the API key (``serve_config.yaml``'s ``args``)."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, Mapping

from pydantic import ConfigDict, Field, field_validator, model_validator

from dfast_serve.config.diffusion import ENV_PREFIX, UltraFastSwitches, deep_merge, resolve_diffusion_options
from dfast_serve.config.models import ServedModelConfig
from dfast_serve.wire import MAX_TOKENS_CEILING
from dfast_serve.wire.options import DiffusionOptions, StrictModel


class RouterConfig(StrictModel):
    """The HTTP ingress: light on CPU, never on a GPU."""

    num_replicas: int = Field(1, ge=1, le=1024)
    num_cpus: float = Field(0.5, ge=0, le=256)
    max_ongoing_requests: int = Field(256, ge=1, le=100_000)
    """Concurrent HTTP requests one router replica relays."""
    max_queued_requests: int = Field(256, ge=-1, le=100_000)
    """HTTP requests waiting for a router replica before the proxy answers 503 + Retry-After (-1: unbounded)."""
    on_head: bool = True
    """Pin router replicas to the Ray head node (on a GPU pool: the CPU-only head), so GPU workers hold model
    replicas only. False lets Ray place routers on any node.
    """


# The router refuses a prompt on its length in characters before a replica tokenizes it (tokenizing
# ~1 MB takes ~1 s of a replica's CPU). A token is rarely more than 8 characters of text, so a
# prompt over 8 x the largest context cannot fit; the default assumes a 32k context.
PROMPT_CHARS_PER_TOKEN = 8
DEFAULT_PROMPT_CONTEXT_TOKENS = 32_768
DEFAULT_MAX_PROMPT_CHARS = PROMPT_CHARS_PER_TOKEN * DEFAULT_PROMPT_CONTEXT_TOKENS


class ServerConfig(StrictModel):
    """Everything ``serve_config.yaml`` passes to the application builder (its ``args``)."""

    # Errors never show input values: a config error must not print the API key (a model-level
    # error would show the whole input, key included).
    model_config = ConfigDict(hide_input_in_errors=True)

    models: list[ServedModelConfig] = Field(min_length=1)
    router: RouterConfig = Field(default_factory=RouterConfig)
    ultra_fast: UltraFastSwitches = Field(default_factory=UltraFastSwitches)
    auto_ar_below_tokens: int = Field(16, ge=0, le=MAX_TOKENS_CEILING)
    """model "auto": AR when max_tokens is below this, diffusion otherwise."""
    default_max_tokens: int = Field(64, ge=1, le=MAX_TOKENS_CEILING)
    """max_tokens when a request leaves it out."""
    request_timeout_s: float = Field(300.0, gt=0, le=86_400)
    """A generation running longer is ended with an error."""
    queue_timeout_s: float = Field(30.0, gt=0, le=86_400)
    """A request with no output this long after arrival (waiting for a replica slot, then its first forward pass)
    gets 503 + Retry-After.
    """
    retry_after_s: int = Field(1, ge=0, le=3600)
    """Retry-After seconds sent with every 503."""
    require_api_key: bool = False
    """Refuse to start without an API key (from api_key, api_key_file, DFASTLLM_API_KEY or DFASTLLM_API_KEY_FILE),
    so that a key the environment failed to deliver cannot leave the server open.
    """
    native_full_text_chars: int = Field(262_144, ge=0, le=100_000_000)
    """The native stream (/v1/dfast/stream) repeats the text so far (full_text) in its events until the characters it
    has repeated reach this; later events carry full_text null, and the final event always the whole text. Without a
    bound a long answer's stream grows with the square of its length, and so does what a client that does not read
    leaves buffered in Ray's proxy.
    """
    max_body_bytes: int = Field(1_000_000, ge=1024, le=16_000_000)
    """Larger request bodies get 413. The router parses each body in its event loop with up to ~10 bytes of memory
    per body byte (benchmarks/serving/body_memory.py).
    """
    body_read_timeout_s: float = Field(30.0, gt=0, le=600)
    """A request body not received in full this long after arrival gets 408, so slow (or stalled) uploads cannot
    hold the router's request slots.
    """
    max_prompt_chars: int = Field(
        DEFAULT_MAX_PROMPT_CHARS, ge=1024, le=16_000_000, description="A prompt (or the messages' contents "
        "together) longer than this many characters gets 400 at the router, before any tokenizer runs. Default: "
        f"{PROMPT_CHARS_PER_TOKEN} characters per token of a {DEFAULT_PROMPT_CONTEXT_TOKENS}-token context, above "
        "the context of every embedded model (tiny-mdlm 1024, SmolLM2 8192); for a longer-context model set "
        f"{PROMPT_CHARS_PER_TOKEN} x its context."
    )
    api_key: str | None = Field(None, min_length=1, repr=False)
    """Require Authorization: Bearer <key> (env DFASTLLM_API_KEY). Prefer api_key_file or DFASTLLM_API_KEY_FILE on
    a shared cluster: a key written here is readable through `serve config` and the dashboard. Sent as UTF-8
    bytes; no leading/trailing spaces or control characters (a header cannot carry them).
    """
    api_key_file: str | None = None
    """File holding the API key (env DFASTLLM_API_KEY_FILE); read at start, never shown."""
    api_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """The API key's SHA-256 in lowercase hex, instead of the key (`printf %s "$KEY" | sha256sum`): a config that
    holds only this never carries the secret. Whatever the key's source, the router receives only this digest.
    """
    allowed_hosts: list[str] | None = Field(None, max_length=256)
    """Host header names (no port) the router answers; others get 403. Default: with no API key (and not
    allow_unauthenticated), the loopback names only (localhost, 127.x.y.z, ::1), so that a web page whose
    name an attacker points at 127.0.0.1 (DNS rebinding) cannot use a keyless server through the visitor's
    browser; with a key, any host. ["*"] answers any host.
    """
    allow_unauthenticated: bool = False
    """Serve without an API key although the HTTP proxies listen beyond loopback (http_options.host 0.0.0.0);
    without it such a server refuses to start.
    """
    open_probes: bool = False
    """With an API key set, also answer /ready and /metrics without it (a load balancer or a Prometheus
    scraper on a private network). /health, the playground page and /version are always open.
    """

    @model_validator(mode="after")
    def _one_key(self) -> "ServerConfig":
        if self.api_key is not None and self.api_key_sha256 not in (None, key_digest(self.api_key)):
            raise ValueError("api_key and api_key_sha256 name different keys")
        return self

    @property
    def key_sha256(self) -> str | None:
        """The digest the router checks keys against (None: no key)."""
        return key_digest(self.api_key) if self.api_key is not None else self.api_key_sha256

    def host_allowed(self, host: str) -> bool:
        """Whether the router answers a request whose Host header names ``host`` (port removed)."""
        if self.allowed_hosts is not None:
            return "*" in self.allowed_hosts or host.lower() in (h.lower() for h in self.allowed_hosts)
        return self.key_sha256 is not None or self.allow_unauthenticated or is_loopback(host.lower())

    def for_router(self) -> dict[str, Any]:
        """This config as the router's deployment argument: the key only as its digest, no key file path."""
        return {**self.model_dump(exclude={"api_key", "api_key_file"}), "api_key_sha256": self.key_sha256}

    @field_validator("api_key")
    @classmethod
    def _key_fits_a_header(cls, key: str | None) -> str | None:
        if key is None:
            return key
        if key != key.strip(" \t"):
            raise ValueError("must not start or end with a space or tab (HTTP drops them from a header)")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise ValueError("must not contain control characters (a header cannot carry them)")
        return key

    @model_validator(mode="after")
    def _unique_names(self) -> "ServerConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if "auto" in names:
            raise ValueError('"auto" is reserved for engine selection')
        return self

    def resolve_diffusion(self, environ: Mapping[str, str] | None = None) -> dict[str, DiffusionOptions]:
        """Each diffusion model's options before the request layer: env < ``ultra_fast`` < its section.

        Strictly validated, as requests are, so that a bad serve_config.yaml or env value fails at
        start, not on every request.
        """
        return {m.name: resolve_diffusion_options(deep_merge(self.ultra_fast.as_overrides(), m.diffusion),
                                                  environ=environ, strict=True)
                for m in self.models if m.engine == "diffusion"}

    def check_exposure(self, proxy_host: str | None) -> None:
        """Refuse to serve without a key on proxies reachable from other machines.

        ``proxy_host`` is Serve's ``http_options.host`` (None when no Serve is running, e.g. under
        ``serve build``: nothing is exposed yet, the check runs again when the app is deployed).
        """
        if self.key_sha256 or self.allow_unauthenticated or proxy_host is None or is_loopback(proxy_host):
            return
        raise ValueError(
            f"the HTTP proxies listen on {proxy_host} (not loopback) and no API key is configured: set "
            f"{ENV_PREFIX}API_KEY_FILE (or args.api_key_file) to a secret file, or {ENV_PREFIX}API_KEY in the "
            f"cluster's environment; or say `allow_unauthenticated: true` in the application's args"
        )


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1; IPv6 in brackets too). A name such as
    ``127.0.0.1.example.com`` is not: it can resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def key_digest(key: str | bytes) -> str:
    """The SHA-256 (hex) of a key: of its UTF-8 bytes for a ``str``."""
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).hexdigest()
