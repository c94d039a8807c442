"""The records that cross the DeploymentHandle between the ingress and a model replica.

The ingress sends one ``ReplicaRequest``; the replica's ``generate`` yields ``StreamingChunk``
deltas, or one ``APIError`` (``wire/errors.py``) when the request is refused or fails. Chunks
carry only what is new: the text so far is never resent, so a stream costs O(answer) across
processes, not O(answer²). Nothing here imports Ray, the engine or the server: every layer above
uses these records as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from dfast_serve.wire.options import DiffusionOptions

FinishReason = Literal["stop", "length", "cancelled"]
MAX_TOKENS_CEILING = 1_000_000  # model context limits apply later; this only refuses absurd numbers early


@dataclass
class SamplingParams:
    """Decoding controls common to every engine. ``temperature == 0`` means greedy.

    The vLLM extras (docs/api.md): ``ignore_eos`` never proposes EOS, so the answer is exactly
    ``max_tokens`` long; ``min_tokens`` forbids EOS in the first ``min_tokens`` answer positions;
    ``repetition_penalty`` (vLLM/CTRL style) scales down the logits of every token already in the
    context (the prompt and the answer tokens decided so far, in any order); ``min_p`` drops tokens
    less likely than ``min_p`` × the most likely one (after the temperature). ``draft`` (native stream
    only) attaches the current best guess of the undecided tail to every chunk.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    skip_special_tokens: bool = True
    draft: bool = False


@dataclass(frozen=True)
class ReplicaRequest:
    """One generation as the replica receives it, validated and planned by the ingress.

    Exactly one of ``prompt`` / ``messages`` is set. ``diffusion`` is the model's resolved
    options with the request's ``dfast`` overrides applied (None for an AR model). ``arrived`` is
    the request's arrival at the ingress in Unix seconds, so later hops can be timed against it.
    """

    request_id: str
    params: SamplingParams
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    diffusion: DiffusionOptions | None = None
    arrived: float = 0.0

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a ReplicaRequest has exactly one of prompt or messages")


@dataclass
class StreamingChunk:
    """One stream event: a delta. The text so far is the concatenation of every ``new_text``
    (consumers that want it, such as the native SSE stream's ``full_text``, accumulate it: sending it
    with every chunk would make a stream quadratic in its length).

    ``total_tokens`` counts the answer tokens behind the text so far (EOS excluded; after a stop
    string, only the tokens before the cut), ``target_tokens`` is ``max_tokens``, ``progress`` is
    the share of the answer decided (1.0 on the final chunk), ``nfe`` the forward passes spent so
    far, ``time_ms`` the time since the engine started the request.
    """

    new_text: str
    new_tokens: int
    total_tokens: int
    target_tokens: int
    progress: float
    time_ms: float
    is_first: bool
    is_final: bool
    nfe: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    draft: str | None = None  # the undecided tail's best guess as text, when the request asked for it

    def to_dict(self) -> dict:
        return asdict(self)
