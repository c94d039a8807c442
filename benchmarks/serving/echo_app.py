"""A Serve app with dfast_serve's hop structure and no work: what Ray Serve + HTTP cost by themselves.

``benchmarks.serving.waterfall`` serves it beside dfast_serve in the same ``serve run`` (a second
application, ``route_prefix: /echo``), so both pay the same proxy, cluster and machine load:

* ``POST /echo/two-hop``: proxy → ingress (Starlette, reads the JSON body) → replica generator through a
  streaming ``DeploymentHandle`` (one yield of a chunk dict shaped like dfast_serve's) → SSE → client;
* ``POST /echo/one-hop``: proxy → ingress, which answers the same SSE event itself.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

CHUNK = {"new_text": "And", "full_text": "And", "new_tokens": 1, "total_tokens": 1, "target_tokens": 64,
         "progress": 0.02, "time_ms": 0.0, "is_first": True, "is_final": True, "nfe": 1, "finish_reason": "length",
         "prompt_tokens": 8}


async def _sse(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]] | None = None) -> AsyncIterator[bytes]:
    """The first chunk at once (as dfast_serve's router sends it), then the rest as it arrives."""
    yield _event(first)
    if rest is not None:
        async for item in rest:
            yield _event(item)
    yield b"data: [DONE]\n\n"


def _event(item: dict[str, Any]) -> bytes:
    return f"data: {json.dumps({'choices': [{'index': 0, 'text': item['new_text']}]})}\n\n".encode()


@serve.deployment(name="EchoReplica", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class EchoReplica:
    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield CHUNK


@serve.deployment(name="EchoIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class EchoIngress:
    def __init__(self, replica: DeploymentHandle) -> None:
        self.replica = replica.options(stream=True)

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=[Route("/two-hop", self.two_hop, methods=["POST"]),
                                 Route("/one-hop", self.one_hop, methods=["POST"])])

    async def two_hop(self, request: Request) -> Response:
        payload = json.loads(await request.body())
        stream = self.replica.generate.remote(payload)
        first = await stream.__anext__()
        return StreamingResponse(_sse(first, stream), media_type="text/event-stream")

    async def one_hop(self, request: Request) -> Response:
        json.loads(await request.body())
        return StreamingResponse(_sse(CHUNK), media_type="text/event-stream")


app = EchoIngress.bind(EchoReplica.bind())
