"""Shared test fixtures: one session-scoped local Ray cluster, offline environment, shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
GUARD_ENV = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "echo_ray.serve.body_guard:proxy_middlewares",
    "ECHO_BODY_TIMEOUT_S": "2",
    "ECHO_BODY_TIMEOUT_PER_MB_S": "1",
    "ECHO_BODY_TIMEOUT_MAX_S": "3",
}


def shared_path(*parts: str) -> Path:
    """Path into ../shared/data, skipping the calling test with a clear reason when absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (../shared is absent in this checkout)")
    return p


def diversified(ckpt, std: float = 0.2, seed: int = 0):
    """A copy of a tiny checkpoint with larger random matrices: greedy output rarely repeats a token,
    so EOS can be placed anywhere (the tiny preset's init emits one token everywhere)."""
    import copy

    import torch

    c = copy.deepcopy(ckpt)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in c.model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return c


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (2 CPUs, oversubscribed logically)."""
    import ray

    if not ray.is_initialized():
        # The Serve proxy (a Ray worker) inherits these: the body deadline of echo_ray.serve.body_guard,
        # short so test_serve_guard's stalled clients time out quickly.
        os.environ.update(GUARD_ENV)
        from echo_ray.serve.app import PROXY_ENV  # and Serve's request path as `echo-ray serve` sets it

        os.environ.update(PROXY_ENV)
        ray.init(
            num_cpus=int(os.environ.get("ECHO_TEST_RAY_CPUS", "4")),
            include_dashboard=False,
            log_to_driver=False,
            # Dummy S3 keys stand in for each node's own credential chain (an instance role on a real
            # cluster): workers resolve credentials themselves; none travel in pickled filesystems.
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                      "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}},
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen2.5-VL checkpoint (block size 8), built once per test session."""
    from echo_ray.config import TinyModelConfig
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.model.tiny import build_tiny_checkpoint

    out = tmp_path_factory.mktemp("tiny_ckpt")
    return build_tiny_checkpoint(out, TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom corpus (12 studies, seed 0), written once per session."""
    from echo_ray.data.phantom import write_phantom

    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, 12, seed=0)
    return out


@pytest.fixture(scope="session")
def moto_s3():
    """A local S3 (moto server on loopback); yields the endpoint URL with dummy credentials set.

    Stands in for AWS, which cannot be reached here; the code under test uses plain boto3/pyarrow.
    """
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
