"""DecodeEngine == the reference decoders token for token (float64), join/leave, capacity, host reads."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from conftest import diversified

from echo_ray.config import PromptConfig, SlotsConfig
from echo_ray.decode.ar import ARDecoder
from echo_ray.decode.batch import collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.engine import DecodeEngine, EngineFull, RowMode, RowRequest
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.prompt import StudyPrompt, build_prompt


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_dir):
    c = load_checkpoint(str(tiny_ckpt_dir))
    c.model.double()  # float64: mathematically equal paths cannot differ in an argmax
    return c


@pytest.fixture(scope="module")
def diverse(ckpt):
    """Larger random weights: greedy output rarely repeats, so EOS can be placed anywhere."""
    return diversified(ckpt)


def _trim(p: StudyPrompt, n: int) -> StudyPrompt:
    """Drop n instruction tokens (text after the images), keeping the chat tail."""
    ids = torch.cat([p.input_ids[: -6 - n], p.input_ids[-6:]])
    return StudyPrompt(ids, p.pixel_values, p.image_grid_thw)


@pytest.fixture(scope="module")
def prompts(ckpt, phantom_dir):
    from echo_ray.data.phantom import read_phantom

    recs = read_phantom(phantom_dir)
    imgs = [[Image.open(im["path"]).convert("RGB") for im in r["images"]] for r in recs[:3]]
    studies = [imgs[0][:1], imgs[0][:1] + imgs[1][:1], [imgs[2][0].resize((168, 280))]]
    out = [build_prompt(ckpt.tokenizer, ckpt.image_processor, s, "en", PromptConfig()) for s in studies]
    out.append(_trim(out[0], out[0].length % 8))  # a prompt that ends on a block edge (B = 4 and 8)
    return out


def _reference(c, prompts, mode: RowMode, max_new: int, eos: int):
    B = mode.block_size
    batch = collate_prompts(c.model, prompts, B, c.pad_id, c.mask_id)
    if mode.kind == "ar":
        dec = ARDecoder(c.model, eos, max_new)
    else:
        sampler = OneStepSampler() if mode.kind == "onestep" else ConfidenceSampler(mode.steps, mode.threshold)
        dec = BlockDecoder(c.model, c.mask_id, eos, B, sampler, mode.cache, max_new, record_topk=mode.record_topk)
    toks, hit = [[] for _ in prompts], []
    events = list(dec.stream(batch))
    for ev in events:
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
        hit = ev.hit_max
    return toks, hit, events


def _engine_run(eng: DecodeEngine, reqs: list[RowRequest]):
    ids = eng.admit(reqs)
    toks = {i: [] for i in ids}
    hit = {}
    while eng.has_work:
        for ev in eng.step():
            toks[ev.row].extend(ev.tokens)
            if ev.finished:
                hit[ev.row] = ev.hit_max
    return [toks[i] for i in ids], [hit[i] for i in ids]


def _engine(c, eos=None, **slots) -> DecodeEngine:
    cfg = SlotsConfig(**{"max_rows": 4, "max_len": 512, **slots})
    return DecodeEngine(c.model, c.mask_id, c.eos_id if eos is None else eos, cfg)


MODES = {
    "onestep": lambda B: RowMode("onestep", B),
    "static": lambda B: RowMode("multistep", B, steps=4),
    "dynamic": lambda B: RowMode("multistep", B, threshold=0.6),
    "vanilla": lambda B: RowMode("onestep", B, cache="vanilla"),
}


@pytest.mark.parametrize("B", [4, 8])
@pytest.mark.parametrize("kind", sorted(MODES))
def test_engine_matches_reference_with_per_row_budgets(ckpt, prompts, B, kind) -> None:
    lengths = [p.length for p in prompts]
    assert any(n % B == 0 for n in lengths) and any(n % B for n in lengths)
    mode = MODES[kind](B)
    budgets = [13, 5, 9, 2 * B]
    never = ckpt.mask_id  # an EOS id the block decoders never emit: budgets decide
    got, hit = _engine_run(_engine(ckpt, eos=never), [RowRequest(p, mode, b) for p, b in zip(prompts, budgets)])
    # Without EOS a shorter budget's tokens are a prefix of a longer one's: one batched reference run.
    want, _, _ = _reference(ckpt, prompts, mode, max(budgets), never)
    assert got == [w[:b] for w, b in zip(want, budgets)] and all(hit)


def test_ar_matches_reference(ckpt, prompts) -> None:
    mode = RowMode("ar")
    budgets = [9, 4, 13, 6]
    never = ckpt.mask_id
    got, hit = _engine_run(_engine(ckpt, eos=never), [RowRequest(p, mode, b) for p, b in zip(prompts, budgets)])
    want, _, _ = _reference(ckpt, prompts, mode, max(budgets), never)
    assert got == [w[:b] for w, b in zip(want, budgets)] and all(hit)


@pytest.mark.parametrize("kind", ["onestep", "ar"])
def test_eos_inside_block_at_edge_and_never(diverse, prompts, kind) -> None:
    c, B = diverse, 4
    mode = RowMode("onestep", B) if kind == "onestep" else RowMode("ar")
    p = prompts[0]
    free = B - p.length % B if kind == "onestep" else 1
    ref = _reference(c, [p], mode, 40, c.mask_id)[0][0]
    first: dict[int, int] = {}
    for i, t in enumerate(ref):
        first.setdefault(t, i)
    inside = [t for t, i in first.items() if 0 < i < free] if kind == "onestep" else [ref[3]]
    edge = [t for t, i in first.items() if i >= free and (i - free) % B == 0 and i > 0]
    assert inside and edge, f"need distinct tokens at the test positions, got {ref}"
    for eos, budget in ((inside[0], 40), (edge[0], 40), (c.mask_id, 11)):
        want, want_hit, _ = _reference(c, [p], mode, budget, eos)
        got, hit = _engine_run(_engine(c, eos=eos), [RowRequest(p, mode, budget)])
        assert got == want and hit == want_hit
        assert hit == [eos == c.mask_id]


def test_rows_join_and_leave_mid_report_with_poisoned_slots(ckpt, prompts) -> None:
    """Rows admitted while others run, in freed (NaN-filled) slots, give their solo tokens."""
    never = ckpt.mask_id
    one, ar, multi = RowMode("onestep", 8), RowMode("ar"), RowMode("multistep", 4, steps=2)
    solo = {}
    for key, (p, mode, b) in {"a": (prompts[0], one, 40), "b": (prompts[1], one, 9), "c": (prompts[2], ar, 6),
                              "d": (prompts[3], multi, 14), "e": (prompts[2], one, 17)}.items():  # fmt: skip
        solo[key] = (_engine_run(_engine(ckpt, eos=never), [RowRequest(p, mode, b)])[0][0], (p, mode, b))
    eng = _engine(ckpt, eos=never, max_rows=3)
    toks: dict[int, list[int]] = {}
    names: dict[int, str] = {}

    def admit(*keys):
        ids = eng.admit([RowRequest(*solo[k][1]) for k in keys])
        names.update(zip(ids, keys))
        toks.update({i: [] for i in ids})

    def poison_free_slots():
        for t in eng.kv.k + eng.kv.v:
            t[eng.running :] = float("nan")

    admit("a", "b")
    for _ in range(2):
        for ev in eng.step():
            toks[ev.row].extend(ev.tokens)
    admit("c")  # an AR row joins while a and b are mid-report; b (9 tokens) has left by now
    assert eng.running == 2 and eng.free_slots == 1
    poison_free_slots()
    admit("d")  # a multi-step row takes b's old slot
    for _ in range(4):
        for ev in eng.step():
            toks[ev.row].extend(ev.tokens)
    while not eng.free_slots:  # step until someone leaves, then reuse the freed slot
        for ev in eng.step():
            toks[ev.row].extend(ev.tokens)
    poison_free_slots()
    admit("e")
    while eng.has_work:
        for ev in eng.step():
            toks[ev.row].extend(ev.tokens)
    assert {names[i]: t for i, t in toks.items()} == {k: v[0] for k, v in solo.items()}
    assert len(set(eng.stats.rows_per_step)) > 1


def test_cancel_frees_the_slot_and_stops_events(ckpt, prompts) -> None:
    eng = _engine(ckpt, eos=ckpt.mask_id, max_rows=2)
    a, b = eng.admit([RowRequest(prompts[0], RowMode("onestep", 8), 30), RowRequest(prompts[1], RowMode("onestep", 8), 30)])
    eng.step()
    eng.cancel(a)
    assert eng.running == 1 and eng.free_slots == 1
    assert {ev.row for ev in eng.step()} == {b}
    with pytest.raises(KeyError):
        eng.cancel(a)


def test_capacity_and_length_refused_before_compute(ckpt, prompts) -> None:
    eng = _engine(ckpt, max_rows=2, max_len=200)
    mode = RowMode("onestep", 8)
    with pytest.raises(EngineFull, match="3 rows asked but only 2 of 2 slots free"):
        eng.admit([RowRequest(p, mode, 8) for p in prompts[:3]])
    longest = max(prompts, key=lambda p: p.length)
    with pytest.raises(InputError, match="exceeds the engine's slot length max_len=200"):
        eng.admit([RowRequest(prompts[0], mode, 8), RowRequest(longest, mode, 201 - longest.length)])
    assert eng.stats.forwards == 0 and eng.free_slots == 2
    # EngineBatch queues rows beyond the free slots and admits them as others finish.
    run = EngineBatch(eng, prompts[:3], mode, [5, 30, 12])
    toks = [[] for _ in range(3)]
    for ev in run.events():
        for i, t in enumerate(ev.tokens):
            toks[i].extend(t)
    assert [len(t) for t in toks] == [5, 30, 12] or any(ckpt.eos_id in t for t in toks)
    assert max(eng.stats.rows_per_step) == 2 and eng.running == 0


@pytest.mark.parametrize("kind", ["onestep", "static", "dynamic", "ar"])
def test_host_reads_per_block(ckpt, prompts, monkeypatch, kind) -> None:
    """One device->host read per block (the EOS check); a data-dependent schedule adds one per step."""
    mode = RowMode("ar") if kind == "ar" else MODES[kind](8)
    eng = _engine(ckpt, eos=ckpt.mask_id)
    eng.admit([RowRequest(p, mode, 20) for p in prompts[:3]])
    counts = {"n": 0}
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    while eng.has_work:
        counts["n"] = 0
        f0 = eng.stats.forwards
        events = eng.step()
        steps = events[0].steps
        if kind == "dynamic":
            assert counts["n"] == 1 + steps + 1  # one check per step + the final "no MASK left" check
        else:
            assert counts["n"] == 1, f"{counts['n']} host reads in one {kind} block"
        assert eng.stats.forwards - f0 <= steps


def test_traces_match_reference(ckpt, prompts) -> None:
    mode = RowMode("multistep", 8, steps=4, record_topk=5)
    never = ckpt.mask_id
    _, _, ref = _reference(ckpt, prompts[:3], mode, 16, never)
    eng = _engine(ckpt, eos=never)
    events = list(EngineBatch(eng, prompts[:3], mode, 16).events())
    assert len(events) == len(ref)
    for e, r in zip(events, ref):
        assert e.tokens == r.tokens and e.steps == r.steps
        for name in ("tokens", "fixed", "commit_step", "topk_ids"):
            assert torch.equal(getattr(e.trace, name), getattr(r.trace, name)), name
        assert torch.allclose(e.trace.topk_logprobs, r.trace.topk_logprobs, atol=1e-6)


def test_forward_counts(ckpt, prompts) -> None:
    p, B = prompts[0], 8
    max_new = 3 * B - p.length % B  # exactly three blocks
    fwd = {}
    for cache in ("fused", "vanilla"):
        eng = _engine(ckpt, eos=ckpt.mask_id)
        run = EngineBatch(eng, [p], RowMode("onestep", B, cache=cache), max_new)
        assert len(list(run.events())) == 3
        fwd[cache] = run.forwards[0]
    assert fwd == {"fused": 1 + 3, "vanilla": 1 + 2 * 3 - 1}


def test_row_mode_validation_and_from_decode() -> None:
    from echo_ray.config import DecodeConfig

    assert RowMode.from_decode(DecodeConfig(mode="multistep", block_size=8)) == RowMode("multistep", 8, steps=8)
    assert RowMode.from_decode(DecodeConfig(mode="ar")) == RowMode("ar", 1)
    with pytest.raises(ValueError, match="steps per block"):
        RowMode("multistep", 4, steps=5)
    with pytest.raises(ValueError, match="unknown multi-step schedule"):
        RowMode("multistep", 4, steps=2, schedule="nope")
    with pytest.raises(ValueError, match="decode.engine=reference"):
        RowMode("onestep", 4, cache="none")


@pytest.mark.parametrize("kind", ["onestep", "ar"])
def test_equal_length_rows_share_their_prefill(ckpt, prompts, kind) -> None:
    """Rows admitted together with equal prefill lengths take one forward per chunk, not one per row,
    and decode exactly as each row alone."""
    mode = RowMode(kind, 1 if kind == "ar" else 8)
    same = [prompts[0], prompts[0], prompts[1], prompts[0]]  # two prefill shapes: 3 rows + 1 row
    eng = DecodeEngine(ckpt.model, ckpt.mask_id, ckpt.eos_id, SlotsConfig(max_rows=4, max_len=512, prefill_chunk=4096))
    batched, _ = _engine_run(eng, [RowRequest(p, mode, 24) for p in same])
    assert eng.stats.prefill_forwards == 2
    for p, toks in zip(same, batched):
        solo = DecodeEngine(ckpt.model, ckpt.mask_id, ckpt.eos_id, SlotsConfig(max_rows=1, max_len=512))
        alone, _ = _engine_run(solo, [RowRequest(p, mode, 24)])
        assert alone[0] == toks and len(toks) == 24
