"""The bottom layer: records that cross the handle (request, chunk delta, error) and the request
options they carry. Everything else in the package may import it; it imports nothing of the package."""

from dfast_serve.wire.errors import APIError, bad_request
from dfast_serve.wire.options import BatchInvariance, ConfidenceKind, DiffusionOptions, StrictModel, UltraFastConfig
from dfast_serve.wire.records import MAX_TOKENS_CEILING, FinishReason, ReplicaRequest, SamplingParams, StreamingChunk

__all__ = ["APIError", "bad_request", "BatchInvariance", "ConfidenceKind", "DiffusionOptions", "FinishReason", "MAX_TOKENS_CEILING",
           "ReplicaRequest", "SamplingParams", "StreamingChunk", "StrictModel", "UltraFastConfig"]
