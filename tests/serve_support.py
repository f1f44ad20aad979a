"""Helpers shared by the test_serve_* modules: one tiny checkpoint and one Serve HTTP proxy per session.

The tiny checkpoint is the random `tiny` preset with one change: a random model with tied embeddings
argmaxes the token it was fed, so it answers `<|mask|>` forever, which decodes to "" and would leave
the page and the per-caller comparisons with nothing to compare. Shrinking the special-token
embedding rows keeps it a random model that emits visible, image-dependent text. (A trained tiny
ECHO checkpoint cannot exist here yet; this stands in for one.)

Apps are started once per session under their own route prefix and reused across modules.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import requests
import torch

from echo_ray.config import DecodeConfig, PromptConfig, TinyModelConfig
from echo_ray.data.phantom import read_phantom, tokenizer_corpus, write_phantom
from echo_ray.model.checkpoint import load_checkpoint, save_checkpoint
from echo_ray.model.tiny import build_tiny_checkpoint

MAX_NEW_TOKENS = 24  # 3 blocks of 8: short decodes keep the suite fast
# The shared "echo_api" app (ingress + engine): limits small enough to trip with small files.
API_APP = "echo_api"
API_ARGS = dict(max_body_bytes=1_000_000, max_pixels=600_000, max_new_tokens_limit=512)
_state: dict = {"apps": {}}


def tiny_checkpoint() -> Path:
    if "ckpt" not in _state:
        root = Path(tempfile.mkdtemp(prefix="echo_serve_test_"))
        raw = build_tiny_checkpoint(root / "raw", TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())
        ckpt = load_checkpoint(str(raw))
        special = sorted(set(ckpt.tokenizer.all_special_ids) | set(ckpt.tokenizer.added_tokens_decoder))
        with torch.no_grad():
            ckpt.model.get_input_embeddings().weight[special] *= 0.01
        _state["ckpt"] = save_checkpoint(ckpt.model, ckpt.tokenizer, ckpt.image_processor, root / "echo_tiny")
        _state["phantom"] = root / "phantom"
        write_phantom(_state["phantom"], 8, seed=0)
    return _state["ckpt"]


def phantom_pngs() -> list[Path]:
    """Frontal phantom PNGs (synthetic, written per session)."""
    tiny_checkpoint()
    return [Path(s["images"][0]["path"]) for s in read_phantom(_state["phantom"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_base() -> str:
    """Start Serve's HTTP proxy once on a free loopback port."""
    if "base" not in _state:
        from ray import serve

        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _state["base"] = f"http://127.0.0.1:{port}"
    return _state["base"]


def start_app(name: str, **serve_args) -> str:
    """serve.run the report service at /<name> (once per session); returns its base URL."""
    if name in _state["apps"]:
        return _state["apps"][name]
    from ray import serve

    from echo_ray.serve.app import build_app

    args = {"model": str(tiny_checkpoint()), "decode": {"max_new_tokens": MAX_NEW_TOKENS}, **serve_args}
    base = http_base()
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")  # the entry serve_config.yaml uses
    url = f"{base}/{name}"
    wait_ready(url)
    _state["apps"][name] = url
    return url


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"serve app at {url} did not become ready")


def local_generator():
    """The same checkpoint and decode settings as the apps, decoded in-process (single-row reference)."""
    from echo_ray.decode.generator import ReportGenerator

    if "gen" not in _state:
        ckpt = load_checkpoint(str(tiny_checkpoint()))
        _state["gen"] = ReportGenerator(ckpt, DecodeConfig(max_new_tokens=MAX_NEW_TOKENS), PromptConfig())
    return _state["gen"]
