"""Benchmark: RAD's asymmetric layout vs full duplication, tokens per row and training step time.

RAD trains on ``[prompt | clean response | noisy response]`` (P + 2R tokens when P is
block-aligned); the prior two-copy recipe duplicates the whole ``[prompt | response]`` (2(P + R)).
Both rows run the same code a training step runs: `rad_mask` (two-stream block-diffusion mask),
`echo_ray.model.forward.lm_logits` (explicit M-RoPE ids and mask), per-block noise and
`rad_loss`, forward + backward, no optimizer step (identical for both). Token ids are random and
the rows are text-only (positions equal on the three M-RoPE axes): step time depends on shapes,
not content. The language model is built directly from a config with random weights.

Shapes:
    --shape tiny   the tiny preset's width (hidden 128, 3 layers, vocab 4096), fp32; runs anywhere
    --shape 7b     Qwen2.5-7B-shaped LM (hidden 3584, 28 heads, 4 KV heads, MLP 18944, vocab
                   152064), bf16, on a GPU; --layers N keeps the first N of the 28 layers (default
                   all 28; per-layer cost is identical, so the ratio barely moves with fewer)
Default P = 1024 prompt tokens, R = 256 response tokens, B = 8, one row per step.

Last stdout line (with --json): {"rad_tokens_per_row", "full_tokens_per_row",
"rad_vs_full_step_time_ratio" (full / RAD), "rad_step_s", "full_step_s", "device", ...}.

Usage:
    python benchmarks/rad.py --json
    python benchmarks/rad.py --json --shape 7b --layers 28 --iters 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from echo_ray.model.checkpoint import resolve_device
from echo_ray.model.forward import lm_logits
from echo_ray.model.masks import rad_mask
from echo_ray.train.losses import rad_loss
from echo_ray.train.noise import sample_block_noise
from echo_ray.train.rad_layout import RadLayout, full_duplication_layout, pad_response, rad_layout

SHAPES = {
    "tiny": dict(hidden=128, layers=3, heads=4, kv_heads=2, mlp=384, vocab=4096, dtype=torch.float32),
    "7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, mlp=18944, vocab=152064, dtype=torch.bfloat16),
}


def build_model(shape: dict, layers: int, device: torch.device):
    """Random Qwen2.5-VL with the requested LM shape (a 1-block vision tower, unused here)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = shape["hidden"] // shape["heads"]
    section = head_dim // 2
    mrope = [section - 2 * (section // 3), section // 3, section // 3]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
                         num_hidden_layers=layers, num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=8192,
                         bos_token_id=0, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=shape["hidden"]),
        attn_implementation="sdpa",
    )  # fmt: skip
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=shape["dtype"])
    return model.train()


def make_row(layout: RadLayout, mask_id: int, generator: torch.Generator, device: torch.device) -> dict:
    """Batch-of-one tensors for a layout: ids with noise applied, targets, mask, positions, rates."""
    block, cand = layout.block[None], layout.candidate[None]
    masked, t = sample_block_noise(block, cand, 0.3, 0.8, generator)
    ids = torch.where(masked, torch.full_like(block, mask_id), layout.ids[None])
    valid = torch.ones_like(cand)
    return {
        "ids": ids.to(device), "targets": layout.ids[None].to(device), "masked": masked.to(device), "t": t.to(device),
        "pos": layout.source[None].expand(3, 1, -1).contiguous().to(device),
        "mask": rad_mask(block, layout.is_noisy[None], valid).to(device),
        "n_response": layout.response_len,
    }  # fmt: skip


def one_step(model, row: dict, device: torch.device) -> float:
    """Seconds of one forward + backward (RAD loss) for one row."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    emb = model.get_input_embeddings()(row["ids"])
    logits = lm_logits(model, emb, row["pos"], row["mask"])
    rad_loss(logits, row["targets"], row["masked"], row["t"], row["n_response"]).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def paired_step_times(model, rows: dict[str, dict], iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median step seconds per layout; the layouts alternate so machine load affects both alike."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(warmup + iters):
        for name, row in rows.items():
            dt = one_step(model, row, device)
            if i >= warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="LM layers (default: the shape's)")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1 keeps timings stable on a shared machine; 0 = torch default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    if args.shape == "7b" and device.type != "cuda" and args.device == "auto":
        raise SystemExit("--shape 7b needs a CUDA device (pass --device cpu with few --layers to smoke-test it)")
    layers = args.layers or shape["layers"]
    torch.manual_seed(0)
    model = build_model(shape, layers, device)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shape["vocab"] - 1, (args.prompt,), generator=gen)
    response = torch.randint(0, shape["vocab"] - 1, (args.response,), generator=gen)
    response = pad_response(response, args.prompt, args.block, eos_id=1)
    mask_id = shape["vocab"] - 1
    rad = rad_layout(prompt, response, args.block)
    full = full_duplication_layout(prompt, response, args.block)
    rows = {"rad": make_row(rad, mask_id, gen, device), "full": make_row(full, mask_id, gen, device)}
    med = paired_step_times(model, rows, args.iters, args.warmup, device)
    rad_s, full_s = med["rad"], med["full"]
    out = {
        "rad_tokens_per_row": rad.length, "full_tokens_per_row": full.length,
        "token_ratio": round(full.length / rad.length, 4),
        "rad_step_s": round(rad_s, 5), "full_step_s": round(full_s, 5),
        "rad_vs_full_step_time_ratio": round(full_s / rad_s, 4),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": args.shape, "layers": layers, "dtype": str(shape["dtype"]).replace("torch.", ""),
        "prompt_tokens": args.prompt, "response_tokens": args.response, "block_size": args.block,
        "rows_per_step": 1, "iters": args.iters, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if not args.json:
        print(f"RAD {rad.length} tokens/row, {rad_s * 1000:.1f} ms/step; full duplication {full.length} tokens/row, "
              f"{full_s * 1000:.1f} ms/step; full/RAD = {full_s / rad_s:.2f}x")  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
