"""CUDA only: the engine's CUDA-graph path gives the eager path's and the reference decoders' tokens."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from echo_ray.config import PromptConfig, SlotsConfig
from echo_ray.decode.engine import DecodeEngine, RowMode, RowRequest
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.prompt import build_prompt

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _tokens(eng, prompts, mode, budgets):
    toks = [[] for _ in prompts]
    for ev in EngineBatch(eng, prompts, mode, budgets).events():
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
    return toks


def test_cuda_graphs_match_eager(tiny_ckpt_dir, phantom_dir) -> None:
    from echo_ray.data.phantom import read_phantom

    c = load_checkpoint(str(tiny_ckpt_dir), device="cuda")
    recs = read_phantom(phantom_dir)
    prompts = [build_prompt(c.tokenizer, c.image_processor, [Image.open(r["images"][0]["path"]).convert("RGB")], "en",
                            PromptConfig()) for r in recs[:5]]  # fmt: skip
    budgets = [40, 9, 23, 17, 31]  # rows leave at different blocks: buckets 8 -> 4 -> 2 -> 1
    never = c.mask_id
    for mode in (RowMode("onestep", 8), RowMode("multistep", 8, steps=4), RowMode("ar"),
                 RowMode("onestep", 4, cache="vanilla")):  # fmt: skip
        graphs = DecodeEngine(c.model, c.mask_id, never, SlotsConfig(max_rows=8, max_len=512, cuda_graphs=True))
        eager = DecodeEngine(c.model, c.mask_id, never, SlotsConfig(max_rows=8, max_len=512, cuda_graphs=False))
        got = _tokens(graphs, prompts, mode, budgets)
        assert got == _tokens(eager, prompts, mode, budgets), mode
        assert [len(t) for t in got] == budgets
        assert graphs.runner.replays > 0 and eager.runner.replays == 0
