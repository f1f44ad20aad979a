"""Decode speed, side by side in one run: AR vs multi-step vs one-step (vanilla and fused KV).

Measures tokens/s, forwards per report and latency at batch 1 and 16 on the static-slot
`DecodeEngine` (the keys without prefix, AR included; with `--graphs on,off` also the engine without
CUDA graphs, `eager_*` twins, and `graphs_match_eager`) and on the reference decoders
(`reference_*` twins), plus `engine_vs_reference` (kind -> batch -> tok/s ratio) and
`mixed_length` (32 rows with budgets drawn from 32..256: the engine admits rows as others finish,
the reference decodes fixed batches that wait for their longest row). Every decoder generates
exactly `--max-new` tokens per row (EOS is disabled: random weights would stop at arbitrary
places), so the comparison is per token of equal work. `identical_tokens` checks fused ==
vanilla == no-cache recompute for one-step and multi-step, and engine == reference (AR included),
in float64 so that mathematically
equal paths cannot differ by rounding.

What is timed (the same on every side): the whole decode of a batch from `StudyPrompt`s to tokens,
i.e. image encoding (one vision-tower call for the batch: `collate_prompts` on the reference,
`DecodeEngine.admit` on the engine), the prompt prefill and every decode step. AR and the block
modes both run on the same engine (`ar` is `RowMode("ar")`: the same slot forward, one token per
forward), so `onestep_fused_vs_ar` compares equal work per token. Model load, the tiny checkpoint
and slot allocation happen once, outside the timed region; one untimed warm-up decode precedes the
`--repeats` timed ones (median). On a shared machine run it a few times: the ratios move with load.

Shapes: `tiny` (the CPU preset with phantom images) and `7b` (GPU only: a randomly initialized
Qwen2.5-7B-shaped language model in bf16 with a small vision tower, 1,024-token prompt, 256 new
tokens; no weights are needed to time it). `--layers`/`--vocab` shrink the 7b shape at its real
widths, and `--allow-cpu` runs it on the CPU: the rehearsal of benchmarks/gpu_check.sh --dry-run.
`--budget-s` stops measuring once the run has taken that long (the rest is listed in `unmeasured`).

Usage:
    python benchmarks/decode.py --json
    python benchmarks/decode.py --shape 7b --graphs on,off --json          # on a GPU
    python benchmarks/decode.py --shape 7b --layers 1 --vocab 2048 --prompt-len 32 --max-new 16 \
        --batches 1,2 --allow-cpu --json                                   # CPU rehearsal
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_ray.config import SlotsConfig  # noqa: E402
from echo_ray.decode.ar import ARDecoder  # noqa: E402
from echo_ray.decode.batch import collate_prompts  # noqa: E402
from echo_ray.decode.blockwise import BlockDecoder  # noqa: E402
from echo_ray.decode.engine import DecodeEngine, RowMode  # noqa: E402
from echo_ray.decode.engine_batch import EngineBatch  # noqa: E402
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler  # noqa: E402
from echo_ray.model.checkpoint import resolve_device  # noqa: E402
from decode_shapes import shape7b_setup, tiny_setup  # noqa: E402

NO_EOS = -1  # an id no model can emit: every row runs to max_new tokens


KINDS = ("ar", "multistep_fused", "onestep_vanilla", "onestep_fused")


def row_mode(kind: str, B: int) -> RowMode:
    if kind == "ar":
        return RowMode("ar")
    cache = "vanilla" if kind.endswith("vanilla") else "fused"
    return RowMode("multistep", B, steps=B, cache=cache) if kind.startswith("multistep") else RowMode("onestep", B, cache=cache)


def make_decoder(kind: str, model, mask_id: int, B: int, max_new: int):
    if kind == "ar":
        return ARDecoder(model, NO_EOS, max_new)
    sampler = ConfidenceSampler(steps=B) if kind.startswith("multistep") else OneStepSampler()
    cache = "vanilla" if kind.endswith("vanilla") else "none" if kind.endswith("recompute") else "fused"
    return BlockDecoder(model, mask_id, NO_EOS, B, sampler, cache, max_new)


class Bench:
    """Model, prompts and the engines (slots allocated once) shared by every measurement.

    `engines`: "static" (CUDA graphs where the device has them) and, if asked, "eager" (no graphs)."""

    def __init__(self, model, mask_id, pad_id, prompts, B, max_new, repeats, max_rows, eager=False, warmup=True):
        self.model, self.mask_id, self.pad_id, self.prompts = model, mask_id, pad_id, prompts
        self.B, self.max_new, self.repeats, self.warmup = B, max_new, repeats, warmup
        longest = max(p.length for p in prompts) + 256 + 2 * B
        self.slots = SlotsConfig(max_rows=max_rows, max_len=max(longest, max_new + longest))
        self.engines = {"static": DecodeEngine(model, mask_id, NO_EOS, self.slots)}
        if eager:
            self.engines["eager"] = DecodeEngine(model, mask_id, NO_EOS, replace(self.slots, cuda_graphs=False))
        self.engine = self.engines["static"]

    def sync(self):
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()

    def run_once(self, engine: str, kind: str, prompts, budgets=None):
        """One decode of `prompts`: (seconds, forwards per report, tokens per row)."""
        self.sync()
        t0 = time.perf_counter()
        st = self.engines.get(engine, self.engine).stats
        s0 = (st.decode_s, st.forwards - st.prefill_forwards)
        if engine in self.engines:
            run = EngineBatch(self.engines[engine], prompts, row_mode(kind, self.B), budgets or self.max_new)
            events, fwd = run.events(), lambda: max(run.forwards)
        else:
            batch = collate_prompts(self.model, prompts, 1 if kind == "ar" else self.B, self.pad_id, self.mask_id)
            dec = make_decoder(kind, self.model, self.mask_id, self.B, self.max_new)
            events, fwd = dec.stream(batch), lambda: dec.stats.forwards
        toks = [[] for _ in prompts]
        for ev in events:
            for i, t in enumerate(ev.tokens):
                toks[i].extend(t)
        self.sync()
        n_fwd = st.forwards - st.prefill_forwards - s0[1]
        self.ms_per_forward = 1000 * (st.decode_s - s0[0]) / n_fwd if n_fwd else None
        return time.perf_counter() - t0, fwd(), toks

    def measure(self, engine: str, kind: str, prompts) -> tuple[dict, list[list[int]]]:
        """(figures, tokens of the last run) of one decoder on `prompts`."""
        if self.warmup:
            self.run_once(engine, kind, prompts)  # warm-up (and CUDA graph capture)
        times, fwd, toks = [], 0, None
        for _ in range(self.repeats):
            dt, fwd, toks = self.run_once(engine, kind, prompts)
            times.append(dt)
        wall = statistics.median(times)
        n_tok = sum(len(t) for t in toks)
        out = {"tokens_per_s": n_tok / wall, "forwards_per_report": fwd, "latency_ms": wall * 1000,
               "tokens": n_tok, "batch": len(prompts)}  # fmt: skip
        if engine in self.engines:
            out["ms_per_decode_forward"] = self.ms_per_forward  # decode steps only (prefill excluded)
        return out, toks


def identical_tokens(bench: Bench, prompts, max_new) -> bool:
    """fused == vanilla == recompute (reference) and engine == reference, in float64 (fp32 on GPU)."""
    m = bench.model
    m64 = copy.deepcopy(m).to(torch.float64) if m.device.type == "cpu" else copy.deepcopy(m).float()
    b64 = Bench(m64, bench.mask_id, bench.pad_id, prompts, bench.B, max_new, 1, len(prompts))
    ok = True
    for base in ("onestep", "multistep"):
        outs = [b64.run_once("reference", f"{base}_{c}", prompts)[2] for c in ("fused", "vanilla", "recompute")]
        ok &= outs[0] == outs[1] == outs[2]
        ok &= b64.run_once("static", f"{base}_fused", prompts)[2] == outs[0]
    ok &= b64.run_once("static", "ar", prompts)[2] == b64.run_once("reference", "ar", prompts)[2]
    del m64, b64
    return bool(ok)


def reference_schedule_identical(ckpt_dir: str | None = None) -> bool:
    """Quota schedule (and one-step fused) == the test-only reference decoder on its conformance cases.

    Runs tests/reference_decode.py's cases (B in {4, 8}, S in {B, B/2}, static and dynamic) in
    float64 on the tiny preset, whatever --shape is timed.
    """
    from PIL import Image

    from echo_ray.config import PromptConfig, TinyModelConfig
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.model.prompt import build_prompt
    from echo_ray.model.tiny import build_tiny_checkpoint

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from reference_decode import conformance_cases, diversify, pick_eos

    if ckpt_dir is None:
        tmp = tempfile.mkdtemp(prefix="echo_ref_")
        ckpt_dir = str(build_tiny_checkpoint(tmp, TinyModelConfig(), block_size=8, corpus=tokenizer_corpus()))
    c = load_checkpoint(ckpt_dir)
    model = diversify(c.model.to(torch.float64))
    img = [Image.new("RGB", (112, 112), 90)]
    prompts = [build_prompt(c.tokenizer, c.image_processor, img, "en", PromptConfig(system=" ".join(["w"] * k)))
               for k in (1, 2, 3)]  # fmt: skip
    results = conformance_cases(model, prompts, c.mask_id, pick_eos(model, prompts, c.mask_id), c.pad_id)
    return all(results.values())


def mixed_length(bench: Bench, rows: int, lo: int, hi: int, seed: int = 0) -> dict:
    """`rows` reports with budgets drawn from lo..hi, one-step fused: the engine admits rows as others
    finish; the reference decodes batches of max_rows, each waiting for its longest row."""
    rng = random.Random(seed)
    budgets = [rng.randint(lo, hi) for _ in range(rows)]
    prompts = (bench.prompts * (rows // len(bench.prompts) + 1))[:rows]
    total = sum(budgets)
    dt_engine = bench.run_once("static", "onestep_fused", prompts, budgets)[0]
    size = bench.slots.max_rows
    t0 = time.perf_counter()
    for i in range(0, rows, size):
        saved, bench.max_new = bench.max_new, max(budgets[i : i + size])
        bench.run_once("reference", "onestep_fused", prompts[i : i + size])
        bench.max_new = saved
    dt_ref = time.perf_counter() - t0
    return {"rows": rows, "budgets": [lo, hi], "slots": size, "tokens": total,
            "engine_tokens_per_s": total / dt_engine, "reference_tokens_per_s": total / dt_ref,
            "engine_vs_reference": dt_ref / dt_engine}  # fmt: skip


def ratio(results: dict, num: str, den: str) -> float | None:
    """tokens/s of result `num` over `den`; None when either was not measured (budget reached)."""
    if num not in results or den not in results:
        return None
    return results[num]["tokens_per_s"] / results[den]["tokens_per_s"]


def add_ratios(out: dict, results: dict, batches: list[int], kinds, prefix: str = "") -> None:
    first = min(batches)
    fused = f"{prefix}onestep_fused@{first}"
    out[f"{prefix}onestep_fused_vs_ar"] = ratio(results, fused, f"{prefix}ar@{first}")
    if "onestep_vanilla" in kinds:
        out[f"{prefix}fused_vs_vanilla"] = ratio(results, fused, f"{prefix}onestep_vanilla@{first}")
    out[f"{prefix}forwards_per_report"] = {k: results[f"{prefix}{k}@{first}"]["forwards_per_report"] for k in kinds
                                           if f"{prefix}{k}@{first}" in results}  # fmt: skip
    for b in batches:
        out[f"{prefix}onestep_fused_vs_ar_batch{b}"] = ratio(results, f"{prefix}onestep_fused@{b}", f"{prefix}ar@{b}")


def add_engine_vs_reference(out: dict, results: dict, batches: list[int], kinds, prefix: str = "") -> None:
    """Engine over reference tokens/s (`prefix` "eager_": the engine without CUDA graphs); batches 1 and 16."""
    out[f"{prefix}engine_vs_reference"] = {
        k: {str(b): ratio(results, f"{prefix}{k}@{b}", f"reference_{k}@{b}") for b in batches if b in (1, 16)}
        for k in kinds
    }  # fmt: skip


def add_graphs(out: dict, results: dict, same: dict[str, bool]) -> None:
    """CUDA graphs vs eager engine: tokens/s ratio per kind@batch and whether the tokens were identical."""
    out["graphs_vs_eager"] = {k: ratio(results, k, f"eager_{k}") for k in results if f"eager_{k}" in results}
    out["graphs_match_eager"] = same


def add_arithmetic(out: dict, model, B: int) -> None:
    """Weight-matmul MACs per generated token at batch 1 (attention over the cache left out): AR runs
    one position and one vocabulary row per token; a one-step fused block runs 2B positions (the MASK
    block and the clean previous block) and B vocabulary rows for B tokens. Where a forward is
    compute-bound (the tiny model on a CPU past a few positions) this, not the forward count, sets the
    speed ratio; where it is overhead- or memory-bound (a GPU at small batch) the forward count does."""
    t = model.config.get_text_config()
    H, I, L = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    V = model.lm_head.weight.shape[0]
    kv = H // t.num_attention_heads * t.num_key_value_heads
    body, head = L * (H * H * 2 + 2 * H * kv + 3 * H * I), H * V
    ar, onestep = body + head, (2 * B * body + B * head) / B
    out["macs_per_token"] = {"ar": ar, "onestep_fused": onestep, "body_per_position": body, "lm_head_per_row": head}
    out["onestep_vs_ar_arithmetic"] = ar / onestep  # < 1: one-step does more arithmetic per token


def add_memory_floor(out: dict, model) -> None:
    """CUDA only: device copy bandwidth and the time one read of the LM weights takes at that rate."""
    if model.device.type != "cuda":
        return
    buf = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    dst.copy_(buf)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        dst.copy_(buf)
    torch.cuda.synchronize()
    gbps = 2 * 20 * buf.numel() / (time.perf_counter() - t0) / 1e9  # read + write per copy
    lm = model.model.language_model
    weights = sum(p.numel() * p.element_size() for p in lm.parameters()) + model.lm_head.weight.numel() * 2
    out["copy_GBps"] = gbps
    out["weight_read_floor_ms"] = 1000 * weights / (gbps * 1e9)
    out["ms_per_decode_forward"] = {k: r["ms_per_decode_forward"] for k, r in out["results"].items()
                                    if "ms_per_decode_forward" in r}  # fmt: skip


def measure_all(bench: Bench, prompts, batches: list[int], kinds, over_budget) -> tuple[dict, dict, list[str]]:
    """Every kind x engine x batch: (results by key, graphs == eager tokens by key, keys left unmeasured)."""
    results: dict[str, dict] = {}
    same: dict[str, bool] = {}
    unmeasured: list[str] = []
    engines = [(e, "" if e == "static" else f"{e}_") for e in bench.engines] + [("reference", "reference_")]
    for bs in batches:
        rows = (prompts * (bs // len(prompts) + 1))[:bs]
        for kind in kinds:
            toks = {}
            for engine, prefix in engines:
                key = f"{prefix}{kind}@{bs}"
                if over_budget():
                    unmeasured.append(key)
                    continue
                results[key], toks[engine] = bench.measure(engine, kind, rows)
                r = results[key]
                print(f"{prefix + kind:26s} batch {bs:3d}: {r['tokens_per_s']:9.1f} tok/s  "
                      f"{r['forwards_per_report']:4d} forwards  {r['latency_ms']:8.1f} ms", file=sys.stderr)  # fmt: skip
            if "static" in toks and "eager" in toks:
                same[f"{kind}@{bs}"] = toks["static"] == toks["eager"]
    return results, same, unmeasured


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=None, help="default 64 (tiny) / 256 (7b)")
    ap.add_argument("--prompt-len", type=int, default=1024, help="7b shape only")
    ap.add_argument("--layers", type=int, default=28, help="7b shape: decoder layers (real widths at any depth)")
    ap.add_argument("--vocab", type=int, default=152064, help="7b shape: vocabulary size")
    ap.add_argument("--allow-cpu", action="store_true", help="run the 7b shape on the CPU (a reduced rehearsal)")
    ap.add_argument("--graphs", default="on", help="'on' (engine with CUDA graphs) or 'on,off' (also without: eager_*)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up decode (CPU rehearsal)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop measuring after this many seconds")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mixed", default="32,32,256", help="mixed-length run: rows,min budget,max budget ('' skips)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="decoders to time (ar and onestep_fused are required)")
    ap.add_argument("--no-identity", action="store_true", help="skip the float64/fp32 identical_tokens check")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads; 1 keeps timings stable on a shared 2-core machine (OpenMP spin-waits otherwise)")
    ap.add_argument("--json", action="store_true")
    return ap, ap.parse_args()


def main() -> int:
    ap, args = parse_args()
    device = resolve_device("auto").type  # "cuda" or "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    if args.shape == "7b" and device != "cuda" and not args.allow_cpu:
        print(json.dumps({"skipped": "the 7b shape needs a CUDA device (--allow-cpu: a reduced CPU rehearsal)",
                          "device": device}))  # fmt: skip
        return 0
    torch.manual_seed(0)
    t_start = time.perf_counter()
    B = args.block_size
    max_new = args.max_new or (64 if args.shape == "tiny" else 256)
    if args.shape == "tiny":
        model, mask_id, pad_id, prompts = tiny_setup(device)
    else:
        model, mask_id, pad_id, prompts = shape7b_setup(device, args.prompt_len, args.layers, args.vocab)
    batches = [int(b) for b in args.batches.split(",")]
    kinds = tuple(args.kinds.split(","))
    graphs = args.graphs.split(",")
    if graphs not in (["on"], ["on", "off"]):
        ap.error(f"--graphs {args.graphs!r}: expected 'on' or 'on,off'")
    bench = Bench(model, mask_id, pad_id, prompts, B, max_new, args.repeats, max(batches + [16]), eager="off" in graphs,
                  warmup=not args.no_warmup)  # fmt: skip
    budget = args.budget_s if args.budget_s is not None else float("inf")
    over = lambda: time.perf_counter() - t_start > budget  # noqa: E731
    results, same, unmeasured = measure_all(bench, prompts, batches, kinds, over)
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": args.shape, "block_size": B, "max_new_tokens": max_new,
        "threads": torch.get_num_threads() if device == "cpu" else None,
    }  # fmt: skip
    if args.shape == "7b":
        out.update(layers=args.layers, vocab=args.vocab, prompt_len=args.prompt_len)
    add_ratios(out, results, batches, kinds)
    add_ratios(out, results, batches, kinds, prefix="reference_")
    add_engine_vs_reference(out, results, batches, kinds)
    if "off" in graphs:
        add_ratios(out, results, batches, kinds, prefix="eager_")
        add_engine_vs_reference(out, results, batches, kinds, prefix="eager_")
        add_graphs(out, results, same)
    out["unmeasured"] = unmeasured
    add_arithmetic(out, model, B)
    if args.mixed:
        n, lo, hi = (int(x) for x in args.mixed.split(","))
        out["mixed_length"] = mixed_length(bench, n, lo, hi)
    if not args.no_identity:
        out["identical_tokens"] = identical_tokens(bench, prompts[:3], min(max_new, 32))
        out["reference_schedule_identical"] = reference_schedule_identical()
    out["results"] = results
    add_memory_floor(out, model)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
