"""Decode speed, side by side in one run: AR vs multi-step vs one-step (vanilla and fused KV).

Measures tokens/s, forwards per report and latency at batch 1 and 16. Every decoder generates
exactly `--max-new` tokens per row (EOS is disabled: random weights would stop at arbitrary
places), so the comparison is per token of equal work. `identical_tokens` checks fused ==
vanilla == no-cache recompute for one-step and multi-step, in float64 so that mathematically
equal paths cannot differ by rounding.

Shapes: `tiny` (the CPU preset with phantom images) and `7b` (GPU only: a randomly initialized
Qwen2.5-7B-shaped language model in bf16 with a small vision tower, 1,024-token prompt, 256 new
tokens; no weights are needed to time it).

Usage:
    python benchmarks/decode.py --json
    python benchmarks/decode.py --shape 7b --json          # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_ray.decode.ar import ARDecoder  # noqa: E402
from echo_ray.decode.batch import collate_prompts  # noqa: E402
from echo_ray.decode.blockwise import BlockDecoder  # noqa: E402
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler  # noqa: E402
from echo_ray.model.prompt import StudyPrompt  # noqa: E402

NO_EOS = -1  # an id no model can emit: every row runs to max_new tokens


def tiny_setup(device: str):
    from PIL import Image

    from echo_ray.config import PromptConfig, TinyModelConfig
    from echo_ray.data.phantom import read_phantom, write_phantom
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.model.prompt import build_prompt
    from echo_ray.model.tiny import build_tiny_checkpoint

    tmp = tempfile.mkdtemp(prefix="echo_bench_")
    build_tiny_checkpoint(f"{tmp}/ckpt", TinyModelConfig(), block_size=8)
    write_phantom(f"{tmp}/ph", 16, seed=0)
    ckpt = load_checkpoint(f"{tmp}/ckpt", device=device)
    recs = read_phantom(f"{tmp}/ph")
    prompts = [
        build_prompt(ckpt.tokenizer, ckpt.image_processor, [Image.open(r["images"][0]["path"]).convert("RGB")], "en", PromptConfig())
        for r in recs
    ]
    return ckpt.model, ckpt.mask_id, ckpt.pad_id, prompts


def shape7b_setup(device: str, prompt_len: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = 152064
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=1, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=3584,
                           fullatt_block_indexes=[0]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    )  # fmt: skip
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16).eval()
    mask_id, pad_id = vocab - 1, 151643
    gen = torch.Generator().manual_seed(0)
    n_img = 64  # one 16x16-patch image -> 8x8 merged = 64 tokens
    grid = torch.tensor([[1, 16, 16]])
    pixels = torch.randn(256, 3 * 2 * 14 * 14, generator=gen)
    prompts = []
    for _ in range(64):
        text = torch.randint(0, 150000, (prompt_len - n_img - 2,), generator=gen)
        ids = torch.cat([text[:8], torch.tensor([151652]), torch.full((n_img,), 151655), torch.tensor([151653]), text[8:]])
        prompts.append(StudyPrompt(ids, pixels, grid))
    return model, mask_id, pad_id, prompts


def make_decoder(kind: str, model, mask_id: int, B: int, max_new: int):
    if kind == "ar":
        return ARDecoder(model, NO_EOS, max_new)
    sampler = ConfidenceSampler(steps=B) if kind.startswith("multistep") else OneStepSampler()
    cache = "vanilla" if kind.endswith("vanilla") else "none" if kind.endswith("recompute") else "fused"
    return BlockDecoder(model, mask_id, NO_EOS, B, sampler, cache, max_new)


def run_once(kind, model, mask_id, pad_id, prompts, B, max_new):
    block = 1 if kind == "ar" else B
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    batch = collate_prompts(model, prompts, block, pad_id, mask_id)
    dec = make_decoder(kind, model, mask_id, B, max_new)
    toks = [[] for _ in prompts]
    for ev in dec.stream(batch):
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
    sync()
    return time.perf_counter() - t0, dec.stats.forwards, toks


def measure(kind, model, mask_id, pad_id, prompts, B, max_new, repeats):
    run_once(kind, model, mask_id, pad_id, prompts, B, max_new)  # warm-up
    times, fwd, toks = [], 0, None
    for _ in range(repeats):
        dt, fwd, toks = run_once(kind, model, mask_id, pad_id, prompts, B, max_new)
        times.append(dt)
    wall = statistics.median(times)
    n_tok = sum(len(t) for t in toks)
    return {"tokens_per_s": n_tok / wall, "forwards_per_report": fwd, "latency_ms": wall * 1000,
            "tokens": n_tok, "batch": len(prompts)}  # fmt: skip


def identical_tokens(model, mask_id, pad_id, prompts, B, max_new) -> bool:
    m64 = copy.deepcopy(model).to(torch.float64) if model.device.type == "cpu" else copy.deepcopy(model).float()
    ok = True
    for base in ("onestep", "multistep"):
        outs = [run_once(f"{base}_{c}", m64, mask_id, pad_id, prompts, B, max_new)[2] for c in ("fused", "vanilla", "recompute")]
        ok &= outs[0] == outs[1] == outs[2]
    del m64
    return bool(ok)


def reference_schedule_identical(ckpt_dir: str | None = None) -> bool:
    """Quota schedule (and one-step fused) == the test-only reference decoder on its conformance cases.

    Runs tests/reference_decode.py's cases (B in {4, 8}, S in {B, B/2}, static and dynamic) in
    float64 on the tiny preset, whatever --shape is timed.
    """
    from PIL import Image

    from echo_ray.config import PromptConfig, TinyModelConfig
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.model.prompt import build_prompt
    from echo_ray.model.tiny import build_tiny_checkpoint

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from reference_decode import conformance_cases, diversify, pick_eos

    if ckpt_dir is None:
        ckpt_dir = str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="echo_ref_"), TinyModelConfig(), block_size=8))
    c = load_checkpoint(ckpt_dir)
    model = diversify(c.model.to(torch.float64))
    img = [Image.new("RGB", (112, 112), 90)]
    prompts = [build_prompt(c.tokenizer, c.image_processor, img, "en", PromptConfig(system=" ".join(["w"] * k)))
               for k in (1, 2, 3)]  # fmt: skip
    results = conformance_cases(model, prompts, c.mask_id, pick_eos(model, prompts, c.mask_id), c.pad_id)
    return all(results.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=None, help="default 64 (tiny) / 256 (7b)")
    ap.add_argument("--prompt-len", type=int, default=1024, help="7b shape only")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads; 1 keeps timings stable on a shared 2-core machine (OpenMP spin-waits otherwise)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    if args.shape == "7b" and device != "cuda":
        print(json.dumps({"skipped": "the 7b shape needs a CUDA device", "device": device}))
        return 0
    torch.manual_seed(0)
    B = args.block_size
    max_new = args.max_new or (64 if args.shape == "tiny" else 256)
    model, mask_id, pad_id, prompts = tiny_setup(device) if args.shape == "tiny" else shape7b_setup(device, args.prompt_len)
    kinds = ("ar", "multistep_fused", "onestep_vanilla", "onestep_fused")
    results: dict[str, dict] = {}
    for bs in (int(b) for b in args.batches.split(",")):
        rows = (prompts * (bs // len(prompts) + 1))[:bs]
        for kind in kinds:
            r = measure(kind, model, mask_id, pad_id, rows, B, max_new, args.repeats)
            results[f"{kind}@{bs}"] = r
            print(f"{kind:16s} batch {bs:3d}: {r['tokens_per_s']:9.1f} tok/s  {r['forwards_per_report']:4d} forwards  "
                  f"{r['latency_ms']:8.1f} ms", file=sys.stderr)  # fmt: skip
    first = min(int(b) for b in args.batches.split(","))
    tps = lambda k, b=first: results[f"{k}@{b}"]["tokens_per_s"]  # noqa: E731
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": args.shape, "block_size": B, "max_new_tokens": max_new,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "onestep_fused_vs_ar": tps("onestep_fused") / tps("ar"),
        "fused_vs_vanilla": tps("onestep_fused") / tps("onestep_vanilla"),
        "forwards_per_report": {k: results[f"{k}@{first}"]["forwards_per_report"] for k in kinds},
        "identical_tokens": identical_tokens(model, mask_id, pad_id, prompts[:3], B, min(max_new, 32)),
        "reference_schedule_identical": reference_schedule_identical(),
        "results": results,
    }  # fmt: skip
    for b in args.batches.split(","):
        out[f"onestep_fused_vs_ar_batch{b}"] = tps("onestep_fused", int(b)) / tps("ar", int(b))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
