"""The one configuration tree of dfast_serve, and the one place environment variables are read.

Diffusion options resolve in one place, ``resolve_diffusion_options``, highest first:
request extension field (``"dfast": {...}`` in the body) > serve_config.yaml (the model's
``diffusion`` section, then the server-wide ``ultra_fast`` switches) > ``DFASTLLM_*`` environment
variables > the defaults of ``DiffusionOptions``. A server resolves everything but the request
layer once, in ``build_app`` (``ServerConfig.resolve_diffusion``); the ingress applies each
request's ``dfast`` overrides on top.

Where the environment is read: ``build_app`` runs in a Ray task that the Serve controller starts
with the application's ``runtime_env``, so ``runtime_env.env_vars`` in serve_config.yaml (or the
Ray cluster's own environment) is what counts; a variable set in the shell of a ``serve run``
that attaches to an existing cluster never gets there.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, Field, field_validator, model_validator

from dfast_serve.wire import MAX_TOKENS_CEILING
from dfast_serve.wire.options import BatchInvariance, ConfidenceKind, DiffusionOptions, StrictModel, UltraFastConfig

# BatchInvariance, ConfidenceKind, DiffusionOptions and UltraFastConfig are the engine's (engine/options.py),
# re-exported here.


ENV_PREFIX = "DFASTLLM_"
DIFFUSION_SOURCES = ("llada", "dream", "llada-remote", "dream-remote", "diffusion_gemma")


def _env_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use true/false)")


def diffusion_env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Diffusion options set by environment variables, as a partial ``DiffusionOptions`` dict."""
    env = os.environ if environ is None else environ
    switches: dict[str, Any] = {}
    for field, name in (("enable_ultra_fast_streaming", "ULTRA_FAST_STREAMING"),
                        ("instant_first_token", "INSTANT_FIRST_TOKEN")):
        if (v := env.get(ENV_PREFIX + name)) is not None:
            switches[field] = _env_bool(v, ENV_PREFIX + name)
    for field, name in (("stream_confidence_threshold", "STREAM_CONFIDENCE_THRESHOLD"),
                        ("early_stop_confidence", "EARLY_STOP_CONFIDENCE")):
        if (v := env.get(ENV_PREFIX + name)) is not None:
            switches[field] = float(v)
    return UltraFastSwitches.model_validate(switches).as_overrides()


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_diffusion_options(
    configured: Mapping[str, Any] | None = None,
    request: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    strict: bool = False,
) -> DiffusionOptions:
    """Defaults < environment < serve_config.yaml (``configured``) < request; validated as a whole."""
    layered = deep_merge(diffusion_env_overrides(environ), configured or {})
    return DiffusionOptions.model_validate(deep_merge(layered, request or {}), strict=strict)


class ModelConfig(StrictModel):
    """One served model. ``source`` says how its weights load:

    * ``embedded``: the built-in default for its engine (tiny-mdlm / SmolLM2-135M), no hub access;
    * ``llada`` / ``dream``: a LLaDA or Dream checkpoint (directory or hub id in ``path``) on the
      native code (``models/llada.py``, ``models/dream.py``): no remote code, padded batches and the
      block KV cache; a layout it does not know is refused with an error naming the option below;
    * ``llada-remote`` / ``dream-remote``: the same checkpoints through their own remote code
      (``trust_remote_code``): uncached, equal-length batching only;
    * ``diffusion_gemma``: a DiffusionGemma checkpoint (directory or hub id) on transformers' own
      ``DiffusionGemmaForBlockDiffusion`` (no remote code), with this project's block-diffusion
      scheduler (``engine/diffusion_gemma.py``); text only;
    * ``hf``: any Hugging Face causal LM (``path``), AR engine only.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$")
    engine: Literal["diffusion", "ar"]
    source: Literal["embedded", "llada", "dream", "llada-remote", "dream-remote", "diffusion_gemma", "hf"] = "embedded"
    path: str | None = None
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the replica has a GPU.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on GPU; float32 for tiny-mdlm and bfloat16 for SmolLM2 on CPU."
    )

    @model_validator(mode="after")
    def _source_fits_engine(self) -> "ModelConfig":
        if self.source in DIFFUSION_SOURCES and self.engine != "diffusion":
            raise ValueError(f"source {self.source!r} is a diffusion model; set engine: diffusion")
        if self.source == "hf" and self.engine != "ar":
            raise ValueError("source 'hf' loads causal LMs; set engine: ar")
        if self.source != "embedded" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (checkpoint directory or hub id)")
        return self


class UltraFastSwitches(StrictModel):
    """Server-wide ultra-fast switches (serve_config.yaml ``server:`` / ``DFASTLLM_*`` env vars).

    Each one left unset (None) defers to the layer below it.
    """

    enable_ultra_fast_streaming: bool | None = Field(None, description="DFASTLLM_ULTRA_FAST_STREAMING")
    instant_first_token: bool | None = Field(None, description="DFASTLLM_INSTANT_FIRST_TOKEN")
    stream_confidence_threshold: float | None = Field(None, ge=0.0, le=1.0, description="DFASTLLM_STREAM_CONFIDENCE_THRESHOLD")
    early_stop_confidence: float | None = Field(None, ge=0.0, le=1.0, description="DFASTLLM_EARLY_STOP_CONFIDENCE")

    def as_overrides(self) -> dict[str, Any]:
        """These switches as a partial ``DiffusionOptions`` dict."""
        out: dict[str, Any] = {}
        ultra: dict[str, Any] = {}
        if self.enable_ultra_fast_streaming is not None:
            out["ultra_fast"] = self.enable_ultra_fast_streaming
        if self.instant_first_token is not None:
            ultra["enable_instant_first_token"] = self.instant_first_token
        if self.stream_confidence_threshold is not None:
            ultra["stream_confidence_threshold"] = self.stream_confidence_threshold
        if self.early_stop_confidence is not None:
            ultra["early_stop_confidence"] = self.early_stop_confidence
        if ultra:
            out["ultra_fast_config"] = ultra
        return out


class ReplicaConfig(StrictModel):
    """Ray placement and admission control for one model's replicas."""

    num_replicas: int = Field(1, ge=1, le=1024, description="Fixed replica count (ignored when autoscaling is set).")
    num_gpus: float = Field(0, ge=0, le=16, description="GPUs per replica: 1 on a GPU pool, 0 on a laptop.")
    num_cpus: float = Field(1, ge=0, le=256, description="CPUs reserved per replica.")
    gil_switch_interval_ms: float | None = Field(
        None, gt=0, le=100, description="sys.setswitchinterval in the replica process, in ms (None: Python's 5 ms). "
        "The step thread holds the GIL between torch ops; the replica's event loop, which ships each step's chunks, "
        "waits up to this long to get it (benchmarks/handoff.py)."
    )
    torch_threads: int | None = Field(
        None, ge=1, le=256, description="torch CPU threads of the replica; None: Ray's default, floor(num_cpus) "
        "(at least 1). More than num_cpus lets a CPU replica use idle cores its reservation does not cover."
    )
    accelerator_type: str | None = Field(None, description='Ray accelerator label, e.g. "A100" (needs num_gpus > 0).')
    max_ongoing_requests: int = Field(8, ge=1, le=1024, description="Requests a replica generates at once.")
    max_queued_requests: int = Field(
        16, ge=-1, le=100_000,
        description="Requests waiting for a replica before new ones get 503 + Retry-After (-1: unbounded)."
    )
    autoscaling: dict[str, Any] | None = Field(None, description="Ray Serve autoscaling_config; None = fixed count.")
    max_batch_size: int = Field(
        8, ge=1, le=1024, description="In-flight requests that share one forward pass per step (step-level batching); "
        "1 = each request gets its own pass every step."
    )
    batch_invariance: BatchInvariance = Field(
        "off", description="off: every dtype batches (bf16 on a GPU included); in bf16 a greedy answer can change "
        "with its batch mates (benchmarks/bf16_agreement.py measures how often). strict: a request's output is the "
        "same whatever its batch mates, at a cost: every forward pass runs in the fixed padded shape of its length "
        "bucket, with dummy rows up to max_batch_size (engine/fixed_shape.py)."
    )

    step_token_budget: int = Field(
        2048, ge=64, le=1_000_000, description="Diffusion: canvas tokens one step's forward passes compute. Each "
        "step runs the requests that have had the fewest canvas tokens so far, as many as fit, so a short request "
        "never waits on more than this much other work between two of its passes (a long canvas runs alone)."
    )
    max_canvas_tokens: int = Field(
        2048, ge=16, le=1_000_000, description="Diffusion: prompt + max_tokens of one request at most (also capped "
        "by the model's context); at most step_token_budget. Larger requests get 400 context_length_exceeded."
    )
    max_block_length: int = Field(
        512, ge=1, le=4096, description="Diffusion: largest dfast.block_length a request may ask for (a block is "
        "what every pass samples over); larger gets 400 naming dfast.block_length."
    )

    @field_validator("batch_invariance", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``off`` as false: that is the ``"off"`` it meant. ``true`` is ambiguous."""
        if value is False:
            return "off"
        if value is True:
            raise ValueError("batch_invariance takes 'off' or 'strict', not a boolean (YAML reads an unquoted "
                             "on/yes/true as true)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "batch_invariant_only" in data:
            raise ValueError("replica.batch_invariant_only was replaced by replica.batch_invariance: 'off' (the "
                             "default: every dtype batches) or 'strict' (outputs identical whatever the batch mates); "
                             "remove batch_invariant_only, and set batch_invariance: strict if you need that guarantee")
        return data

    @model_validator(mode="after")
    def _accelerator_needs_gpu(self) -> "ReplicaConfig":
        if self.accelerator_type and self.num_gpus <= 0:
            raise ValueError("accelerator_type needs num_gpus > 0")
        if self.max_canvas_tokens > self.step_token_budget:
            raise ValueError(f"max_canvas_tokens ({self.max_canvas_tokens}) must not exceed step_token_budget "
                             f"({self.step_token_budget}): a canvas longer than a step would stall the others")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.accelerator_type:
            actor["accelerator_type"] = self.accelerator_type
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.autoscaling:
            options["autoscaling_config"] = self.autoscaling
        else:
            options["num_replicas"] = self.num_replicas
        return options


class ServedModelConfig(ModelConfig):
    """A model the server exposes: how to load it, where it runs, its diffusion defaults."""

    replica: ReplicaConfig = Field(default_factory=ReplicaConfig)
    diffusion: dict[str, Any] = Field(
        default_factory=dict, description="Partial DiffusionOptions for this model (serve_config.yaml layer)."
    )


class RouterConfig(StrictModel):
    """The HTTP ingress: light on CPU, never on a GPU."""

    num_replicas: int = Field(1, ge=1, le=1024)
    num_cpus: float = Field(0.5, ge=0, le=256)
    max_ongoing_requests: int = Field(
        256, ge=1, le=100_000, description="Concurrent HTTP requests one router replica relays."
    )
    max_queued_requests: int = Field(
        256, ge=-1, le=100_000, description="HTTP requests waiting for a router replica before the proxy answers 503 + "
        "Retry-After (-1: unbounded)."
    )
    on_head: bool = Field(
        True, description="Pin router replicas to the Ray head node (on a GPU pool: the CPU-only head), so "
        "GPU workers hold model replicas only. False lets Ray place routers on any node."
    )


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
    auto_ar_below_tokens: int = Field(
        16, ge=0, le=MAX_TOKENS_CEILING,
        description='model "auto": AR when max_tokens is below this, diffusion otherwise.'
    )
    default_max_tokens: int = Field(
        64, ge=1, le=MAX_TOKENS_CEILING, description="max_tokens when a request leaves it out."
    )
    request_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="A generation running longer is ended with an error."
    )
    queue_timeout_s: float = Field(
        30.0, gt=0, le=86_400, description="A request with no output this long after arrival (waiting for a "
        "replica slot, then its first forward pass) gets 503 + Retry-After."
    )
    retry_after_s: int = Field(1, ge=0, le=3600, description="Retry-After seconds sent with every 503.")
    require_api_key: bool = Field(
        False, description="Refuse to start without an API key (from api_key or DFASTLLM_API_KEY), so that a key "
        "the environment failed to deliver cannot leave the server open."
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, le=16_000_000, description="Larger request bodies get 413. The router parses each body "
        "in its event loop with up to ~10 bytes of memory per body byte (benchmarks/body_memory.py)."
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, le=600, description="A request body not received in full this long after arrival gets 408, "
        "so slow (or stalled) uploads cannot hold the router's request slots."
    )
    max_prompt_chars: int = Field(
        DEFAULT_MAX_PROMPT_CHARS, ge=1024, le=16_000_000, description="A prompt (or the messages' contents "
        "together) longer than this many characters gets 400 at the router, before any tokenizer runs. Default: "
        f"{PROMPT_CHARS_PER_TOKEN} characters per token of a {DEFAULT_PROMPT_CONTEXT_TOKENS}-token context, above "
        "the context of every embedded model (tiny-mdlm 1024, SmolLM2 8192); for a longer-context model set "
        f"{PROMPT_CHARS_PER_TOKEN} x its context."
    )
    api_key: str | None = Field(
        None, min_length=1, repr=False, description="Require Authorization: Bearer <key> (env DFASTLLM_API_KEY). "
        "Prefer api_key_file or DFASTLLM_API_KEY_FILE on a shared cluster: a key written here is readable through "
        "`serve config` and the dashboard. Sent as UTF-8 bytes; no leading/trailing spaces or control characters (a header cannot carry them)."
    )
    api_key_file: str | None = Field(
        None, description="File holding the API key (env DFASTLLM_API_KEY_FILE); read at start, never shown."
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve without an API key although the HTTP proxies listen beyond loopback "
        "(http_options.host 0.0.0.0); without it such a server refuses to start."
    )

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
        if self.api_key or self.allow_unauthenticated or proxy_host is None or is_loopback(proxy_host):
            return
        raise ValueError(
            f"the HTTP proxies listen on {proxy_host} (not loopback) and no API key is configured: set "
            f"{ENV_PREFIX}API_KEY_FILE (or args.api_key_file) to a secret file, or {ENV_PREFIX}API_KEY in the "
            f"cluster's environment; or say `allow_unauthenticated: true` in the application's args"
        )


def is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


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
    if config.require_api_key and not config.api_key:
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
