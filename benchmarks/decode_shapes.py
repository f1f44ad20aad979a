"""The models and prompts benchmarks/decode.py times: the tiny preset and the Qwen2.5-7B shape.

`tiny_setup`: the tiny checkpoint with phantom-image prompts. `shape7b_setup`: a randomly initialized
Qwen2.5-VL at the 7B language-model widths (hidden 3584, 28 heads, 4 KV heads, intermediate 18944)
in bf16 with a one-layer vision tower; `layers` and `vocab` shrink it for the CPU rehearsal of the
accelerator check (benchmarks/gpu_check.sh --dry-run). No weights are needed to time either.

Usage:
    model, mask_id, pad_id, prompts = shape7b_setup("cuda", prompt_len=1024)
"""

from __future__ import annotations

import tempfile

import torch

from echo_ray.model.prompt import StudyPrompt


def tiny_setup(device: str):
    from PIL import Image

    from echo_ray.config import PromptConfig, TinyModelConfig
    from echo_ray.data.phantom import read_phantom, tokenizer_corpus, write_phantom
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.model.prompt import build_prompt
    from echo_ray.model.tiny import build_tiny_checkpoint

    tmp = tempfile.mkdtemp(prefix="echo_bench_")
    build_tiny_checkpoint(f"{tmp}/ckpt", TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())
    write_phantom(f"{tmp}/ph", 16, seed=0)
    ckpt = load_checkpoint(f"{tmp}/ckpt", device=device)
    recs = read_phantom(f"{tmp}/ph")
    prompts = [
        build_prompt(ckpt.tokenizer, ckpt.image_processor, [Image.open(r["images"][0]["path"]).convert("RGB")], "en", PromptConfig())
        for r in recs
    ]
    return ckpt.model, ckpt.mask_id, ckpt.pad_id, prompts


def shape7b_setup(device: str, prompt_len: int, layers: int = 28, vocab: int = 152064):
    """Random Qwen2.5-VL at the 7B widths. Special ids sit where Qwen's do relative to the vocabulary's
    end (151643.. at the real 152064), so a reduced vocabulary keeps them in range."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    if vocab < 1024:
        raise ValueError(f"--vocab {vocab}: the 7b shape needs at least 1024 ids (its special ids sit up to 421 "
                         "below the vocabulary's end)")
    vs, img, ve, pad = vocab - 412, vocab - 409, vocab - 411, vocab - 421
    side = 16 if prompt_len >= 256 else 4  # patches per image side: 64 or 4 image tokens after the 2x2 merge
    n_img = side * side // 4
    if prompt_len < n_img + 10:
        raise ValueError(f"--prompt-len {prompt_len}: needs at least {n_img + 10} tokens ({n_img} image tokens)")
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=3584,
                           fullatt_block_indexes=[0]),
        image_token_id=img, video_token_id=vocab - 408, vision_start_token_id=vs, vision_end_token_id=ve,
    )  # fmt: skip
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    mask_id, pad_id = vocab - 1, pad
    gen = torch.Generator().manual_seed(0)
    grid = torch.tensor([[1, side, side]])
    pixels = torch.randn(side * side, 3 * 2 * 14 * 14, generator=gen)
    prompts = []
    for _ in range(64):
        text = torch.randint(0, min(150000, vocab - 512), (prompt_len - n_img - 2,), generator=gen)
        ids = torch.cat([text[:8], torch.tensor([vs]), torch.full((n_img,), img), torch.tensor([ve]), text[8:]])
        prompts.append(StudyPrompt(ids, pixels, grid))
    return model, mask_id, pad_id, prompts
