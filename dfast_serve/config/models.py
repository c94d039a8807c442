"""One served model: where its weights come from, where its replicas run, its diffusion defaults."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from dfast_serve.config.vllm import VLLMOptions
from dfast_serve.wire.options import BatchInvariance, StrictModel

# Replica fields of this project's engines (step-level batching, budgets, canvases): not vLLM's.
TRANSFORMERS_ENGINE_FIELDS = frozenset({
    "gil_switch_interval_ms", "torch_threads", "max_batch_size", "batch_invariance", "step_token_budget",
    "max_running_tokens", "max_canvas_tokens", "max_block_length", "max_draft_tokens", "prefill_chunk_decodes",
    "pass_piece_tokens"})
DIFFUSION_SOURCES = ("llada", "dream", "llada-remote", "dream-remote", "diffusion_gemma")


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
      scheduler (``engine/block/``); text only;
    * ``hf``: any Hugging Face causal LM (``path``), AR engines only.

    ``engine``: ``diffusion``; ``ar``, this project's transformers loop; ``vllm``, an AR model on vLLM's
    engine in its own Python environment (``config/vllm.py``), sources ``embedded`` and ``hf``.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$")
    engine: Literal["diffusion", "ar", "vllm"]
    source: Literal["embedded", "llada", "dream", "llada-remote", "dream-remote", "diffusion_gemma", "hf"] = "embedded"
    path: str | None = None
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    """The hub commit (40 hex digits) to load. Required for llada-remote / dream-remote from a hub id: their
    modelling code runs in the replica (trust_remote_code), so it must be code someone has read, not whatever
    the repository's default branch holds when a replica starts. Other hub sources use it when set.
    """
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when the replica has a GPU."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """auto: bfloat16 on a GPU, float32 on a CPU (models/registry.py:resolve_dtype)."""

    @model_validator(mode="after")
    def _source_fits_engine(self) -> "ModelConfig":
        if self.source in DIFFUSION_SOURCES and self.engine != "diffusion":
            raise ValueError(f"source {self.source!r} is a diffusion model; set engine: diffusion")
        if self.source == "hf" and self.engine == "diffusion":
            raise ValueError("source 'hf' loads causal LMs; set engine: ar (or vllm)")
        if self.source != "embedded" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (checkpoint directory or hub id)")
        if self.source.endswith("-remote") and self.revision is None and not is_local_path(self.path or ""):
            raise ValueError(f"source {self.source!r} runs the checkpoint's own code: pin the hub id {self.path!r} to "
                             f"a commit with revision: <40-hex commit> (or use the native source "
                             f"{self.source.removesuffix('-remote')!r}, which runs no remote code)")
        return self

    @property
    def kind(self) -> Literal["diffusion", "ar"]:
        """What the router cares about: diffusion, or autoregressive (``ar`` and ``vllm`` alike)."""
        return "diffusion" if self.engine == "diffusion" else "ar"


def is_local_path(path: str) -> bool:
    """A checkpoint directory rather than a hub id (``org/name``): absolute, relative with ./ or ../, or ~."""
    return path.startswith(("/", "./", "../", "~"))


class ReplicaConfig(StrictModel):
    """Ray placement and admission control for one model's replicas."""

    num_replicas: int = Field(1, ge=1, le=1024)
    """Fixed replica count (ignored when autoscaling is set)."""
    num_gpus: float = Field(0, ge=0, le=16)
    """GPUs per replica: 1 on a GPU pool, 0 on a laptop."""
    num_cpus: float = Field(1, ge=0, le=256)
    """CPUs reserved per replica."""
    gil_switch_interval_ms: float | None = Field(None, gt=0, le=100)
    """sys.setswitchinterval in the replica process, in ms (None: Python's 5 ms). The step thread holds the GIL
    between torch ops; the replica's event loop, which ships each step's chunks, waits up to this long to get it
    (benchmarks/serving/handoff.py).
    """
    torch_threads: int | None = Field(None, ge=1, le=256)
    """torch CPU threads of the replica; None: Ray's default, floor(num_cpus) (at least 1). More than num_cpus lets
    a CPU replica use idle cores its reservation does not cover.
    """
    accelerator_type: str | None = None
    """Ray accelerator label, e.g. "A100" (needs num_gpus > 0)."""
    max_ongoing_requests: int = Field(8, ge=1, le=1024)
    """Requests a replica generates at once."""
    max_queued_requests: int = Field(16, ge=-1, le=100_000)
    """Requests waiting for a replica before new ones get 503 + Retry-After (-1: unbounded)."""
    autoscaling: dict[str, Any] | None = None
    """Ray Serve autoscaling_config; None = fixed count."""
    max_batch_size: int = Field(8, ge=1, le=1024)
    """In-flight requests that share one forward pass per step (step-level batching); 1 = each request gets its own
    pass every step.
    """
    batch_invariance: BatchInvariance = "off"
    """off: every dtype batches (bf16 on a GPU included); in bf16 a greedy answer can change with its batch mates
    (benchmarks/bf16_agreement.py measures how often). strict: a request's output is the same whatever its batch
    mates, at a cost: every forward pass runs in the fixed padded shape of its length bucket, with dummy rows up
    to max_batch_size (engine/fixed_shape.py).
    """

    step_token_budget: int = Field(2048, ge=64, le=1_000_000)
    """New tokens one step's forward passes compute. Diffusion: canvas tokens; each step runs the requests that
    have had the fewest canvas tokens so far, as many as fit, so a short request never waits on more than this much
    other work between two of its passes (a long canvas runs alone). AR: every running decode takes one token, and
    prompts are prefilled with the rest, in chunks over several steps when longer (chunked prefill), the shortest
    first; so it must exceed max_ongoing_requests.
    """
    pass_piece_tokens: int | None = Field(64, ge=1, le=1_000_000)
    """Diffusion: a forward pass that costs more than twice this many canvas tokens (its sampling counted as in
    step_token_budget) runs in pieces of about this size, one a step, with other requests' passes between them
    (engine/masked/family.py), so that no request waits on another's whole long pass; a new request's first pass goes
    first. Only models whose network runs in pieces (tiny-mdlm, native llada / dream) and not with batch_invariance
    strict. The default suits the embedded CPU model; on a GPU raise it (serve_config.cluster.yaml). None: passes run
    whole.
    """
    prefill_chunk_decodes: float | None = Field(2.0, gt=0, le=10_000)
    """AR: a step's prompt prefill is sized to take about this many decode passes' time, measured as the replica runs
    (engine/ar/pacing.py), so a long prompt delays a new request's first token, or a decoding request's next one, by
    about that much (a new prompt of up to twice that runs whole); while requests decode, prompts under way get at
    most half of the time. None: chunks are sized by
    step_token_budget alone (2,048 prompt tokens cost about one decode pass on a GPU, a hundred on one CPU thread).
    Not with batch_invariance strict, whose chunks have a fixed size.
    """
    max_running_tokens: int | None = Field(65536, ge=64, le=100_000_000)
    """Prompt + max_tokens of the requests a replica runs at once, together (what their KV caches or canvases may
    come to hold); a request waits in the replica's queue until it fits, and one that alone exceeds it gets 400
    context_length_exceeded. None: only max_ongoing_requests counts. The default, 8 x 8192, changes nothing for the
    embedded models at the default max_ongoing_requests; it bounds a long-context model's memory.
    """
    max_canvas_tokens: int = Field(2048, ge=16, le=1_000_000)
    """Diffusion: prompt + max_tokens of one request at most (also capped by the model's context); at most
    step_token_budget. Larger requests get 400 context_length_exceeded.
    """
    max_block_length: int = Field(512, ge=1, le=4096)
    """Diffusion: largest dfast.block_length a request may ask for (a block is what every pass samples over);
    larger gets 400 naming dfast.block_length.
    """
    max_draft_tokens: int = Field(64, ge=1, le=1_000_000)
    """Diffusion: positions past the stream's cursor that a request's draft (native API draft: true) samples at
    each pass and shows; the draft text ends there. Sampling reads a position's whole vocabulary, so an uncapped
    draft would sample every undecided position of the canvas at every pass.
    """

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
    diffusion: dict[str, Any] = Field(default_factory=dict)
    """Partial DiffusionOptions for this model (serve_config.yaml layer)."""
    vllm: VLLMOptions | None = None
    """vLLM's engine arguments (engine: vllm only; None there: the defaults)."""

    @model_validator(mode="after")
    def _vllm_options_fit(self) -> "ServedModelConfig":
        if self.engine != "vllm":
            if self.vllm is not None:
                raise ValueError(f"vllm options apply to engine: vllm, not {self.engine!r}")
            return self
        if self.diffusion:
            raise ValueError("diffusion options apply to engine: diffusion, not 'vllm'")
        options = self.vllm or VLLMOptions()
        # Values, not fields set: a dumped config (the ingress's copy) sets every field to its default.
        engine_only = sorted(f for f in TRANSFORMERS_ENGINE_FIELDS
                             if getattr(self.replica, f) != ReplicaConfig.model_fields[f].default)
        if engine_only:
            raise ValueError(f"replica.{', replica.'.join(engine_only)} configure this project's own engines; vLLM "
                             "schedules itself (see the vllm section: max_num_batched_tokens, ...)")
        gpus, shards = self.replica.num_gpus, options.tensor_parallel_size
        if (gpus > 1 or shards > 1) and shards != gpus:
            raise ValueError(f"vllm.tensor_parallel_size ({shards}) must equal replica.num_gpus ({gpus}) when either "
                             "is above 1: the replica reserves the GPUs vLLM shards over")
        if options.quantization and not self.replica.num_gpus:
            raise ValueError("vllm.quantization needs a GPU replica (replica.num_gpus > 0)")
        self.vllm = options
        return self

    @model_validator(mode="after")
    def _ar_budget_fits_decodes(self) -> "ServedModelConfig":
        replica = self.replica
        if self.engine == "ar" and replica.step_token_budget <= replica.max_ongoing_requests:
            raise ValueError(f"replica.step_token_budget ({replica.step_token_budget}) must exceed "
                             f"replica.max_ongoing_requests ({replica.max_ongoing_requests}) for an AR model: each "
                             "running decode takes one token of a step, and a prompt needs at least one")
        return self
