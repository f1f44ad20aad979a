"""The `tiny` preset: a randomly initialized Qwen2.5-VL small enough for CPU tests and the demo.

Two vision blocks, a 3-layer language model of width 128, and a byte-level BPE trained on the
report text the caller passes (echo_ray.data.phantom.tokenizer_corpus). Everything is built from
configs; nothing is fetched. The result is saved like a real checkpoint (safetensors + config +
tokenizer + image processor) so every loader path is the same.

Usage:
    path = build_tiny_checkpoint("runs/tiny_init", TinyModelConfig(), 8, tokenizer_corpus())
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from echo_ray.config import TinyModelConfig
from echo_ray.model.checkpoint import write_echo_meta
from echo_ray.model.tokenizer import (
    EOS_TOKEN,
    IMAGE_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    train_report_tokenizer,
)

PATCH = 14
MERGE = 2


def image_processor_for(cfg: TinyModelConfig) -> Qwen2VLImageProcessorPil:
    """Pillow-based Qwen2-VL processor (the torchvision one cannot import beside CPU torch)."""
    unit = PATCH * MERGE
    return Qwen2VLImageProcessorPil(
        min_pixels=unit * unit,
        max_pixels=cfg.image_pixels,
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def tiny_model_config(cfg: TinyModelConfig, tokenizer) -> Qwen2_5_VLConfig:
    head_dim = cfg.hidden_size // cfg.num_heads
    section = head_dim // 2  # M-RoPE splits the rotary half-dim over (t, h, w)
    mrope = [section - 2 * (section // 3), section // 3, section // 3]
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids(PAD_TOKEN),
        eos_token_id=ids(EOS_TOKEN),
        pad_token_id=ids(PAD_TOKEN),
    )
    vision = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_heads=cfg.vision_heads,
        out_hidden_size=cfg.hidden_size,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        window_size=112,
        fullatt_block_indexes=[cfg.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids(IMAGE_TOKEN),
        video_token_id=ids(VIDEO_TOKEN),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        tie_word_embeddings=True,
    )


def build_tiny_checkpoint(out_dir: str | Path, cfg: TinyModelConfig, block_size: int, corpus: Sequence[str]) -> Path:
    """Train the tokenizer on `corpus`, build the random model, and save a full checkpoint to `out_dir`.

    The corpus is the caller's (usually echo_ray.data.phantom.tokenizer_corpus()): model code does
    not depend on the data package.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_report_tokenizer(list(corpus), vocab_size=cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model_cfg = tiny_model_config(cfg, tokenizer)
    model = Qwen2_5_VLForConditionalGeneration(model_cfg)
    write_echo_meta(model.config, mask_token_id=tokenizer.convert_tokens_to_ids(MASK_TOKEN), block_size=block_size)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_processor_for(cfg).save_pretrained(out)
    return out
