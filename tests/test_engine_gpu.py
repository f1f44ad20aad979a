"""CUDA only: the engine's CUDA-graph path gives the eager path's tokens in every row mode (engine_graphs_check)."""

from __future__ import annotations

import pytest
import torch

from engine_graphs_check import graphs_match_eager

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_graphs_match_eager(tiny_ckpt_dir, phantom_dir) -> None:
    graphs_match_eager(tiny_ckpt_dir, phantom_dir, "cuda")
