"""The engine's CUDA-graph path against its eager path, callable with or without pytest.

tests/test_engine_gpu.py runs `graphs_match_eager` under pytest on a CUDA device; the accelerator
check (benchmarks/gpu_check.sh) runs this file directly where pytest is not installed (the lent GPU
machines' image), and its CPU rehearsal runs it on the CPU, where both engines are eager and only the
token comparison is meaningful.

Usage:
    python tests/engine_graphs_check.py          # builds a tiny checkpoint + phantom corpus, prints JSON
    python tests/engine_graphs_check.py --modes 1    # the first row mode only (the CPU rehearsal)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from echo_ray.config import PromptConfig, SlotsConfig
from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.model.checkpoint import load_checkpoint, resolve_device
from echo_ray.model.prompt import build_prompt

MODES = (RowMode("onestep", 8), RowMode("multistep", 8, steps=4), RowMode("ar"), RowMode("onestep", 4, cache="vanilla"))


def _tokens(eng, prompts, mode, budgets):
    toks = [[] for _ in prompts]
    for ev in EngineBatch(eng, prompts, mode, budgets).events():
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
    return toks


def graphs_match_eager(ckpt_dir, phantom_dir, device: str = "cuda", modes: tuple = MODES) -> dict:
    """Every mode decodes the same tokens with and without CUDA graphs; raises AssertionError if not.

    On CUDA the graph engine must also have replayed graphs. Returns {"modes", "replays"}."""
    from echo_ray.data.phantom import read_phantom

    c = load_checkpoint(str(ckpt_dir), device=device)
    recs = read_phantom(phantom_dir)
    prompts = [build_prompt(c.tokenizer, c.image_processor, [Image.open(r["images"][0]["path"]).convert("RGB")], "en",
                            PromptConfig()) for r in recs[:5]]  # fmt: skip
    budgets = [40, 9, 23, 17, 31]  # rows leave at different blocks: buckets 8 -> 4 -> 2 -> 1
    never = c.mask_id
    replays = 0
    for mode in modes:
        graphs = DecodeEngine(c.model, c.mask_id, never, SlotsConfig(max_rows=8, max_len=512, cuda_graphs=True))
        eager = DecodeEngine(c.model, c.mask_id, never, SlotsConfig(max_rows=8, max_len=512, cuda_graphs=False))
        got = _tokens(graphs, prompts, mode, budgets)
        assert got == _tokens(eager, prompts, mode, budgets), mode
        assert [len(t) for t in got] == budgets
        assert eager.runner.replays == 0
        if torch.device(device).type == "cuda":
            assert graphs.runner.replays > 0, mode
        replays += graphs.runner.replays
    return {"modes": len(modes), "replays": replays}


def main() -> int:
    import argparse

    from echo_ray.config import TinyModelConfig
    from echo_ray.data.phantom import tokenizer_corpus, write_phantom
    from echo_ray.model.tiny import build_tiny_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", type=int, default=len(MODES), help=f"check the first N of the {len(MODES)} row modes")
    n = ap.parse_args().modes
    device = resolve_device("auto")
    with tempfile.TemporaryDirectory(prefix="echo_graphs_") as d:
        ckpt = build_tiny_checkpoint(Path(d) / "ckpt", TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())
        write_phantom(Path(d) / "phantom", 6, seed=0)
        out = graphs_match_eager(ckpt, Path(d) / "phantom", str(device), MODES[:n])
    print(json.dumps({"device": device.type, "graphs_match_eager": True, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
