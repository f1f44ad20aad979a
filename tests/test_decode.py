"""Decoders on the tiny model: cache variants agree, forward counts, EOS/length stops, batching."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from PIL import Image

from conftest import diversified

from echo_ray.config import DecodeConfig, PromptConfig, SlotsConfig
from echo_ray.decode.batch import collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.generator import ReportGenerator
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.prompt import build_prompt


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_dir):
    c = load_checkpoint(str(tiny_ckpt_dir))
    c.model.double()  # float64 so argmax ties cannot differ between mathematically equal paths
    return c


@pytest.fixture(scope="module")
def studies(phantom_dir):
    from echo_ray.data.phantom import read_phantom

    recs = read_phantom(phantom_dir)
    imgs = [[Image.open(im["path"]).convert("RGB") for im in r["images"]] for r in recs[:3]]
    # Different prompt lengths: one image, two images, and a non-square image.
    imgs[1] = imgs[0] + [imgs[1][0]]
    imgs[2] = [imgs[2][0].resize((168, 280))]
    return imgs


def _prompts(ckpt, studies):
    return [build_prompt(ckpt.tokenizer, ckpt.image_processor, s, "en", PromptConfig()) for s in studies]


def _decode(ckpt, prompts, B, sampler, cache, max_new=20, eos=None):
    batch = collate_prompts(ckpt.model, prompts, B, ckpt.pad_id, ckpt.mask_id)
    dec = BlockDecoder(ckpt.model, ckpt.mask_id, ckpt.eos_id if eos is None else eos, B, sampler, cache, max_new)
    toks = [[] for _ in prompts]
    hit = []
    for ev in dec.stream(batch):
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
        hit = ev.hit_max
    return toks, dec.stats, hit


@pytest.mark.parametrize("B", [4, 8])
@pytest.mark.parametrize("sampler", [OneStepSampler(), ConfidenceSampler(steps=None or 4)], ids=["onestep", "multistep"])
def test_fused_vanilla_recompute_identical(ckpt, studies, B, sampler) -> None:
    prompts = _prompts(ckpt, studies)
    lengths = [p.length for p in prompts]
    assert len(set(lengths)) == 3
    assert any(n % B == 0 for n in lengths) or any(n % B for n in lengths)
    batched = {c: _decode(ckpt, prompts, B, sampler, c)[0] for c in ("fused", "vanilla", "none")}
    assert batched["fused"] == batched["vanilla"] == batched["none"]
    single = [_decode(ckpt, [p], B, sampler, "fused")[0][0] for p in prompts]
    assert single == batched["fused"], "batching must give the same tokens as one row at a time"


def test_prompt_ending_on_block_boundary(ckpt, studies) -> None:
    """Pick B so one prompt ends exactly on a block edge, and check all cache modes agree."""
    p = _prompts(ckpt, studies[:1])[0]
    B = next(b for b in (4, 8, 2, 1) if p.length % b == 0)
    out = {c: _decode(ckpt, [p], B, OneStepSampler(), c)[0] for c in ("fused", "vanilla", "none")}
    assert out["fused"] == out["vanilla"] == out["none"]


@pytest.mark.parametrize("B", [4, 8])
def test_forward_counts(ckpt, studies, B) -> None:
    prompts = _prompts(ckpt, studies[:1])
    tail = prompts[0].length % B
    max_new = 3 * B - tail  # exactly three blocks, no EOS possible (eos id never produced)
    never = ckpt.mask_id
    _, fused, _ = _decode(ckpt, prompts, B, OneStepSampler(), "fused", max_new, eos=never)
    _, vanilla, _ = _decode(ckpt, prompts, B, OneStepSampler(), "vanilla", max_new, eos=never)
    n_blocks = 3
    assert fused.forwards == n_blocks + 1  # + prefill
    # Two forwards per block; the last block's KV write is skipped since nothing reads it.
    assert vanilla.forwards == 2 * n_blocks - 1 + 1
    _, multi, _ = _decode(ckpt, prompts, B, ConfidenceSampler(steps=B), "fused", max_new, eos=never)
    first_block_steps = min(B, B - tail)
    assert multi.forwards == 1 + first_block_steps + (n_blocks - 1) * B


def _first_positions(tokens: list[int]) -> dict[int, int]:
    first: dict[int, int] = {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    return first


@pytest.fixture(scope="module")
def diverse_ckpt(ckpt):
    """The tiny model with larger random weights, so its greedy output rarely repeats a token."""
    return diversified(ckpt)


def test_eos_stops_inside_block_at_edge_and_never(diverse_ckpt, studies) -> None:
    """Use tokens the model really emits as the EOS id to place EOS where the test needs it."""
    ckpt = diverse_ckpt
    B = 4
    prompts = _prompts(ckpt, studies[:1])
    tail = prompts[0].length % B
    free = B - tail  # response slots in the first block
    ref, _, _ = _decode(ckpt, prompts, B, OneStepSampler(), "fused", 40, eos=ckpt.mask_id)
    first = _first_positions(ref[0])
    # EOS inside the first block.
    inside = [t for t, i in first.items() if 0 < i < free]
    edges = [t for t, i in first.items() if i >= free and (i - free) % B == 0]
    assert inside and edges, f"need distinct tokens at the test positions, got {ref[0]}"
    for eos in (inside[0], edges[0]):
        toks, stats, hit = _decode(ckpt, prompts, B, OneStepSampler(), "fused", 40, eos=eos)
        cut = first[eos]
        assert toks[0] == ref[0][:cut] and hit == [False]
        assert stats.forwards == 1 + (0 if cut < free else 1 + (cut - free) // B) + 1
    toks, _, hit = _decode(ckpt, prompts, B, OneStepSampler(), "fused", 10, eos=ckpt.mask_id)
    assert toks[0] == ref[0][:10] and hit == [True]


def test_finished_rows_emit_nothing(ckpt, studies) -> None:
    prompts = _prompts(ckpt, studies)
    B = 4
    ref, _, _ = _decode(ckpt, prompts, B, OneStepSampler(), "fused", 24, eos=ckpt.mask_id)
    eos = ref[0][min(5, len(ref[0]) - 1)]
    toks, _, _ = _decode(ckpt, prompts, B, OneStepSampler(), "fused", 24, eos=eos)
    for row, r in zip(toks, ref):
        expect = r[: r.index(eos)] if eos in r else r
        assert row == expect


def test_generator_validation(ckpt, studies) -> None:
    base = DecodeConfig(mode="onestep", max_new_tokens=8)
    with pytest.raises(InputError, match="differs from the checkpoint"):
        ReportGenerator(ckpt, replace(base, block_size=4), PromptConfig())
    assert ReportGenerator(ckpt, replace(base, block_size=4), PromptConfig(), override_block=True).cfg.block_size == 4
    with pytest.raises(InputError, match="exceeds the block size"):
        ReportGenerator(ckpt, replace(base, mode="multistep", steps=9), PromptConfig())
    gen = ReportGenerator(ckpt, base, PromptConfig())
    with pytest.raises(InputError, match="at least one image"):
        gen.generate([[]], "en")
    with pytest.raises(InputError, match="exceeds the decode engine's slot context of 2048"):
        gen.generate(studies[:1], "en", max_new_tokens=3000)  # fits the model (4096), not the slots
    with pytest.raises(InputError, match="exceeds the model context of 4096"):
        gen.generate(studies[:1], "en", max_new_tokens=100_000, engine="reference")


def test_generator_reports_and_stream(ckpt, studies) -> None:
    gen = ReportGenerator(ckpt, DecodeConfig(mode="onestep", max_new_tokens=16), PromptConfig())
    run = gen.stream(studies[:2], "en")
    events = list(run)
    reports = run.reports
    assert reports is not None and len(reports) == 2
    assert len(events) == math.ceil((studies and max(len(r.tokens) for r in reports) + 8) / 8) or len(events) >= 2
    for r in reports:
        assert r.forward_passes == len(events) + 1
        assert r.prefill_s > 0 and r.decode_s > 0 and r.mode == "onestep" and r.block_size == 8
        assert isinstance(r.findings, str) and isinstance(r.impression, str)
    ar = ReportGenerator(ckpt, DecodeConfig(mode="ar", max_new_tokens=6), PromptConfig()).generate(studies[:1], "en")[0]
    assert ar.mode == "ar" and ar.forward_passes == len(ar.tokens) + (0 if ar.hit_max_length else 1)


def test_ar_batching_matches_single(ckpt, studies) -> None:
    gen = ReportGenerator(ckpt, DecodeConfig(mode="ar", max_new_tokens=10), PromptConfig())
    batched = [r.tokens for r in gen.generate(studies, "en")]
    single = [gen.generate([s], "en")[0].tokens for s in studies]
    assert batched == single


def test_multistep_generate_decodes_more_studies_than_slots_in_batches(ckpt, studies) -> None:
    """Multi-step rows stack traces and need all rows in slots at once: an evaluation batch larger
    than decode.slots.max_rows (the demo's eval batch of 32 against 16 slots) runs in batches."""
    cfg = DecodeConfig(mode="multistep", max_new_tokens=10, slots=SlotsConfig(max_rows=2, max_len=512))
    gen = ReportGenerator(ckpt, cfg, PromptConfig())
    many = [studies[i % 3] for i in range(5)]
    batched = [r.tokens for r in gen.generate(many, "en")]
    single = [gen.generate([s], "en")[0].tokens for s in many]
    assert batched == single


def test_confidence_sampler_static_and_dynamic() -> None:
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.3, 0.4, 0.99]])
    masked = torch.tensor([[True, True, True, True], [False, True, True, True]])
    s = ConfidenceSampler(steps=2)
    c = s.select(conf, masked, 0)
    assert c[0].tolist() == [True, False, False, True]  # ceil(4/2) = 2 most confident
    assert c[1].tolist() == [False, False, True, True]  # ceil(3/2) = 2
    d = ConfidenceSampler(threshold=0.95).select(conf, masked, 0)
    assert d[0].tolist() == [True, False, False, False]  # none above tau: still commit one
    assert d[1].tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        ConfidenceSampler(steps=2, threshold=0.5)
