"""What a request may set for a diffusion model: the options a request (or a model's defaults) carries.

They are part of the wire contract (a ``ReplicaRequest`` carries them across the handle), so they
live at the bottom layer: the engine reads them, ``config.py`` layers them (env < serve_config <
request) and re-exports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ConfidenceKind = Literal["probability", "margin", "entropy"]
BatchInvariance = Literal["off", "strict"]
"""``off``: batch freely (in bf16 a greedy answer can change with its batch mates); ``strict``: a
request's output is the same whatever its batch mates (every pass in the fixed padded shape of its
length bucket, ``engine/fixed_shape.py``)."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config or request must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)  # a field's docstring is its description


class UltraFastConfig(StrictModel):
    """Early streaming for diffusion models (docs/configuration.md, "Diffusion options")."""

    enable_instant_first_token: bool = True
    """At pass `first_token_steps`, decide the confident leading tokens (at least one) so text can stream at once."""
    first_token_steps: int = Field(1, ge=1, le=64)
    """No text is sent before this forward pass; passes before it decide tokens by the schedule as usual (held
    back, not suppressed), and the instant reveal runs at this pass.
    """
    first_token_confidence_threshold: float = Field(0.7, ge=0.0, le=1.0)
    """Leading tokens above this probability are decided at the instant reveal."""
    stream_confidence_threshold: float = Field(0.8, ge=0.0, le=1.0)
    """At each step, undecided leading tokens of the block above this probability are decided at once."""
    stream_every_n_tokens: int = Field(4, ge=0, le=4096)
    """Stall fallback: once this many tokens were decided without the cursor (first undecided position) moving, the
    token at the cursor is decided. 0 disables.
    """
    steps_per_block: int = Field(16, ge=1, le=4096)
    """Forward passes each block may spend, plus what earlier blocks left unspent (independent of max_tokens)."""
    min_steps: int = Field(8, ge=1, le=4096)
    """Lower bound on a request's forward passes (capped at max_tokens); an answer that ends early at EOS or a stop
    string may use fewer. No early stop before it.
    """
    max_steps: int = Field(32, ge=1, le=4096)
    """Upper bound on a request's forward passes; the last one decides every remaining token."""
    early_stop_confidence: float = Field(0.95, ge=0.0, le=1.0)
    """Mean probability of the undecided tokens that ends generation in one go."""
    early_stop_min_progress: float = Field(0.5, ge=0.0, le=1.0)
    """Share decided before early stop may fire."""
    enable_early_stop: bool = True
    """Switch early stop off entirely."""
    hold_steps: int = Field(2, ge=1, le=4096)
    """DiffusionGemma only: a token is committed early once the sampler has accepted the same token at its position
    for this many steps in a row and its entropy is under the sampler's bound (leading tokens only, so the text
    streams in order).
    """
    schedule: Literal["front_loaded", "uniform"] = "front_loaded"
    """How each block's passes are spent: small steps first, or evenly."""

    @model_validator(mode="after")
    def _steps_in_order(self) -> "UltraFastConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class DiffusionOptions(StrictModel):
    """Per-request diffusion knobs; the ``dfast`` extension object of a request body."""

    steps: int | None = Field(None, ge=1, le=4096)
    """Standard path: forward passes in all, split evenly among blocks (default: one per token). Ultra-fast: a
    further cap on max_steps (never below min_steps).
    """
    block_length: int = Field(32, ge=1, le=4096)
    """Semi-autoregressive block size in tokens."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which tokens to commit."""
    ultra_fast: bool = True
    """Use the ultra-fast streaming scheduler."""
    ultra_fast_config: UltraFastConfig = Field(default_factory=UltraFastConfig)
    decoding: Literal["schedule", "threshold"] = "schedule"
    """How many tokens a step commits in the current block: the step schedule's count, or every token whose
    confidence reaches `threshold` (at least one; Fast-dLLM parallel decoding). `steps` (and ultra-fast's
    min/max_steps) still bound the forward passes.
    """
    threshold: float = Field(0.9, ge=0.0, le=1.0)
    """Confidence a token needs to be committed (decoding: threshold)."""
    confidence: ConfidenceKind = "probability"
    """Confidence that ranks commits and meets `threshold`: the proposed token's probability, the top-1 minus top-2
    probability, or exp(-entropy) of the distribution. Ultra-fast's own thresholds always judge by probability.
    """
    cache: Literal["none", "prefix", "dual"] = "none"
    """Block-wise approximate KV cache (Fast-dLLM): reuse the keys/values of the decided prefix (and, dual, of the
    masked suffix) within a block. Models without cache support run without it.
    """

    @model_validator(mode="after")
    def _threshold_ranks_by_confidence(self) -> "DiffusionOptions":
        if self.decoding == "threshold" and self.remasking == "random":
            raise ValueError("decoding 'threshold' commits by confidence; it cannot be combined with remasking 'random'")
        return self
