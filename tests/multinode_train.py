"""Helper for tests/test_train_multinode.py: run CPT on a simulated two-node Ray cluster.

Runs in its own process because it starts its own cluster (`ray.cluster_utils.Cluster`: a head
and one worker node, each with one `echo_slot` resource, and every training worker asks for one,
so the two workers must land on different nodes). A local S3 (moto server on loopback; AWS itself
cannot be reached here) is the shared storage, as on a `ray up` cluster: the model is read from
s3://, Ray Train checkpoints to s3://, and the final export and logs go to s3://. The nodes inherit
this process's environment, so they reach the same endpoint with its dummy credentials.

Usage:
    python tests/multinode_train.py <normalized dataset dir> <tiny checkpoint dir> <scratch dir>
Prints one JSON line with what the test checks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def start_s3() -> str:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    import boto3

    boto3.client("s3").create_bucket(Bucket="echo")
    return endpoint


def main(data: str, model_dir: str, scratch: str) -> int:
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start_s3()
    from echo_ray.storage import exists, list_files, read_text, upload_dir

    upload_dir(model_dir, "s3://echo/models/tiny")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"echo_slot": 1},
                                                            "include_dashboard": False})  # fmt: skip
    cluster.add_node(num_cpus=2, resources={"echo_slot": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    from echo_ray.config import load_config
    from echo_ray.train.launcher import launch

    cfg = load_config(None, {
        "model.path": "s3://echo/models/tiny", "model.cache_dir": str(Path(scratch) / "cache"),
        "train.cpt.data": data, "train.cpt.output_dir": "s3://echo/runs/cpt", "train.cpt.batch_size": 2,
        "train.cpt.max_steps": 2, "train.cpt.checkpoint_every": 2, "train.cpt.max_prompt_tokens": 256,
        "train.cpt.max_response_tokens": 192,
        "train.distributed.backend": "ddp", "train.distributed.cpus_per_worker": 1.0,
        "train.distributed.worker_resources": {"echo_slot": 1}, "train.distributed.storage_path": "s3://echo/ray",
        "train.distributed.report_poll_s": 0.2,
    })  # fmt: skip
    outcome = launch(cfg, "cpt")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    from echo_ray.config import ModelConfig
    from echo_ray.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(outcome.final_dir, ModelConfig(cache_dir=str(Path(scratch) / "cache2")))
    steps = [json.loads(line)["step"] for line in read_text("s3://echo/runs/cpt/metrics.jsonl").splitlines()]
    print(json.dumps({
        "nodes": len(nodes), "final": outcome.final_dir, "checkpoint": outcome.checkpoint,
        "final_files": [Path(f).name for f in list_files(outcome.final_dir, "")],
        "ckpt_state": exists(f"s3://{outcome.checkpoint}/train_state.json"),
        "steps": steps, "mask_id": ckpt.mask_id, "block_size": ckpt.block_size,
        "tb": bool(list_files("s3://echo/runs/cpt/tb", "")),
    }))  # fmt: skip
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
