"""The OpenAI-compatible wire format: request models, response builders, SSE, errors."""
