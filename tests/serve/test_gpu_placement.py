"""GPU pinning without a GPU: a replica asking for num_gpus=1 + accelerator_type A100 lands on the
session cluster's fake-GPU worker node, and a streaming request through it still works; the ingress
stays on the head node."""

from __future__ import annotations

import ray
from ray import serve

from dfast_serve.config import ServerConfig
from dfast_serve.engine import SamplingParams
from dfast_serve.serve.app import HEAD_NODE_RESOURCE, router_actor_options
from dfast_serve.wire import ReplicaRequest
from dfast_serve.serve.replicas import ModelReplica


def test_gpu_replica_lands_on_the_gpu_worker_and_streams(server, ray_cluster):
    worker = next(iter(ray_cluster.worker_nodes))
    options = {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1, "accelerator_type": "A100"}}
    app = ModelReplica.options(name="GPUPinnedReplica", **options).bind(
        {"name": "tiny-mdlm-gpu", "engine": "diffusion"})
    handle = serve.run(app, name="gpu_placement", route_prefix=None)
    try:
        where = handle.options(method_name="node_id").remote().result(timeout_s=60)
        assert where == worker.node_id
        chunks = []
        request = ReplicaRequest("gpu-1", SamplingParams(max_tokens=8), prompt="In the beginning")
        for chunk in handle.options(stream=True).generate.remote(request):
            chunks.append(chunk)
        assert chunks[0].nfe == 1 and chunks[-1].is_final
    finally:
        serve.delete("gpu_placement")


def test_ingress_runs_on_the_head_node_and_holds_no_gpu(server, ray_cluster):
    """router.on_head (default) pins the ingress to the head: model replicas keep the GPU workers."""
    from ray._private.state import actors  # GCS actor table: works without the dashboard

    routers = [a for a in actors().values()
               if a["State"] == "ALIVE" and a["ActorClassName"].endswith(":dfast_serve:Ingress")]
    assert routers, "no live Ingress replica actor"
    head = ray_cluster.head_node.node_id
    assert {a["Address"]["NodeID"] for a in routers} == {head}


def test_ingress_actor_options_never_ask_for_a_gpu_and_follow_on_head():
    models = [{"name": "tiny-mdlm", "engine": "diffusion", "replica": {"num_gpus": 1}}]
    pinned = router_actor_options(ServerConfig.model_validate({"models": models}))
    assert pinned == {"num_cpus": 0.5, "num_gpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}}
    free = router_actor_options(ServerConfig.model_validate({"models": models, "router": {"on_head": False}}))
    assert free == {"num_cpus": 0.5, "num_gpus": 0}
