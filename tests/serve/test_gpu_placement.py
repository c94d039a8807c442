"""GPU pinning without a GPU: a replica asking for num_gpus=1 + accelerator_type A100 lands on the
session cluster's fake-GPU worker node, and a streaming request through it still works."""

from __future__ import annotations

import ray
from ray import serve

from dfast_serve.serve.replicas import DiffusionReplica

def test_gpu_replica_lands_on_the_gpu_worker_and_streams(server, ray_cluster):
    worker = next(iter(ray_cluster.worker_nodes))
    options = {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1, "accelerator_type": "A100"}}
    app = DiffusionReplica.options(name="GPUPinnedReplica", **options).bind(
        {"name": "tiny-mdlm-gpu", "engine": "diffusion"}, {})
    handle = serve.run(app, name="gpu_placement", route_prefix=None)
    try:
        where = handle.options(method_name="node_id").remote().result(timeout_s=60)
        assert where == worker.node_id
        chunks = []
        payload = {"params": {"max_tokens": 8}, "prompt": "In the beginning", "diffusion": None}
        for chunk in handle.options(stream=True).generate.remote(payload):
            chunks.append(chunk)
        assert chunks[0]["nfe"] == 1 and chunks[-1]["is_final"]
    finally:
        serve.delete("gpu_placement")
