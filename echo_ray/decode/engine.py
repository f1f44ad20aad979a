"""DecodeEngine: block decoding over static per-row K/V slots, rows joining and leaving at block edges.

The engine behind generation, evaluation, serving and the DCD teacher (`decode.engine: static`);
`BlockDecoder` / `ARDecoder` stay as the references it is tested against (token-identical in
float64, tests/test_engine.py). Design (issue 13):
- one preallocated K/V buffer per layer for `max_rows` slots x (`max_len` + slack) positions
  (echo_ray.model.slot_forward); each row keeps absolute block alignment (block k of a row holds
  its positions [kB, (k+1)B)), so no left padding; the mask is block-causal over positions;
- `admit` encodes the images and prefills each new row's full prompt blocks into a free slot
  (chunked); the prompt tail joins the first decode block as fixed tokens (as in `collate_prompts`);
- `step` runs one whole block for ONE mode group (round-robin over groups with running rows): the
  fused one-step forward writes block k-1's clean K/V in place while predicting block k; the
  multi-step sampler's later steps re-run the noisy block only. The number of steps of a static
  schedule is known on the host; only a data-dependent schedule (threshold tau, or an unknown
  sampler) reads `masked.any()` once per step. One host read per block: the block's tokens for
  the EOS / budget check. AR rows produce one token per step (block size 1);
- finished rows free their slot before `step` returns (`SlotTable` compacts), `cancel` at once.

Usage:
    eng = DecodeEngine(model, mask_id, eos_id, SlotsConfig(max_rows=16))
    ids = eng.admit([RowRequest(prompt, RowMode.from_decode(cfg), max_new_tokens=160, tag="r1")])
    while eng.has_work:
        for ev in eng.step(): print(ev.row, ev.tokens, ev.finished)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
import torch

from echo_ray.config import SlotsConfig
from echo_ray.decode.engine_modes import RowMode, make_sampler, planned_steps
from echo_ray.decode.events import BlockTrace
from echo_ray.decode.samplers import OneStepSampler
from echo_ray.decode.slots import MAX_BLOCK, RowState, SlotTable
from echo_ray.decode.step_runner import StepRunner
from echo_ray.errors import InputError
from echo_ray.model.forward import embed, prompt_positions
from echo_ray.model.prompt import StudyPrompt
from echo_ray.model.vision_fast import fast_image_features
from echo_ray.model.slot_forward import SlotKV, block_vis_end, slot_forward

__all__ = ["DecodeEngine", "EngineFull", "EngineStats", "RowEvent", "RowMode", "RowRequest"]


@dataclass
class RowRequest:
    prompt: StudyPrompt
    mode: RowMode
    max_new_tokens: int
    tag: object = None


@dataclass
class RowEvent:
    row: int
    tag: object
    block: int  # 0-based block (AR: token) index of this row
    tokens: list[int]  # new response tokens of this block, EOS and beyond cut
    finished: bool
    hit_max: bool
    steps: int  # forwards spent on this block
    trace: BlockTrace | None = None  # (1, B) tensors; with record_topk or multi-step modes
    forwards: int = 0  # forwards this row has taken part in so far, its prefill included


@dataclass
class _NewRow:
    """A row being admitted: its state, slot, prompt ids and prefill inputs (L = n_pre columns)."""

    state: RowState
    slot: int
    ids: torch.Tensor  # (P,)
    n_pre: int
    delta: int
    emb: torch.Tensor  # (L, H)
    pos: torch.Tensor  # (3, L)


class EngineFull(Exception):
    """More rows asked than free slots."""


@dataclass
class EngineStats:
    forwards: int = 0  # all forwards, prefill chunks included
    prefill_forwards: int = 0
    steps: int = 0  # step() calls that ran a group
    rows_per_step: list[int] = field(default_factory=list)
    host_reads: int = 0  # device -> host reads inside step()
    prefill_s: float = 0.0
    decode_s: float = 0.0


class DecodeEngine:
    """Static-slot block / AR decoding with continuous rows (see module docstring)."""

    def __init__(self, model, mask_id: int | None, eos_id: int, cfg: SlotsConfig | None = None):
        cfg = cfg or SlotsConfig()
        if cfg.max_rows < 1 or cfg.max_len < 1:
            raise ValueError(f"slots need max_rows >= 1 and max_len >= 1, got {cfg.max_rows}, {cfg.max_len}")
        self.model, self.mask_id, self.eos_id, self.cfg = model, mask_id, eos_id, cfg
        self.device = model.device
        self.trash = cfg.max_len + MAX_BLOCK  # past every row's last block (rounding slack < MAX_BLOCK)
        self.kv = SlotKV(model, cfg.max_rows, self.trash + MAX_BLOCK)
        self.table = SlotTable(cfg.max_rows, self.device)
        self.runner = StepRunner(model, self.kv, self.table, self.trash, cfg)
        self.stats = EngineStats()
        self._next_row = 0
        self._by_row: dict[int, RowState] = {}
        self._samplers: dict[RowMode, object] = {}
        self._order: list[RowMode] = []  # round-robin order of mode groups
        self._turn = 0

    # ---- public state ------------------------------------------------------------------------
    @property
    def free_slots(self) -> int:
        return self.table.free_slots

    @property
    def running(self) -> int:
        return self.table.running

    @property
    def has_work(self) -> bool:
        return self.table.running > 0

    # ---- admission ---------------------------------------------------------------------------
    def check(self, req: RowRequest) -> None:
        """Refuse a request before any compute (InputError / ValueError naming the problem)."""
        mode, P = req.mode, req.prompt.length
        if req.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        if P + req.max_new_tokens > self.cfg.max_len:
            raise InputError(
                f"prompt of {P} tokens + max_new_tokens {req.max_new_tokens} exceeds the engine's slot length "
                f"max_len={self.cfg.max_len} (decode.slots.max_len)"
            )
        if mode.block_size > MAX_BLOCK:
            raise InputError(f"block size {mode.block_size} exceeds the engine's widest block {MAX_BLOCK}")
        if mode.kind != "ar" and self.mask_id is None:
            raise InputError("block decoding needs a MASK token id; this model has none")
        if mode.kind != "ar":
            tail = req.prompt.input_ids[(P // mode.block_size) * mode.block_size :]
            if bool((tail == self.model.config.image_token_id).any()):
                raise ValueError(f"block size {mode.block_size} is longer than the text after the last image; use a smaller block")

    @torch.no_grad()
    def admit(self, requests: list[RowRequest]) -> list[int]:
        """Prefill new rows into free slots; they join the next step of their mode group."""
        for req in requests:
            self.check(req)
        if len(requests) > self.free_slots:
            raise EngineFull(f"{len(requests)} rows asked but only {self.free_slots} of {self.cfg.max_rows} slots free")
        t0 = time.perf_counter()
        feats = self._image_features(requests)
        rows = [self._place(req, f) for req, f in zip(requests, feats)]
        groups: dict[tuple[int, int, bool], list[_NewRow]] = {}
        for r in rows:  # rows whose prefills have the same shape share one forward per chunk
            groups.setdefault((r.n_pre, r.state.mode.block_size, r.state.mode.kind == "ar"), []).append(r)
        for (_, B, is_ar), group in groups.items():
            f0 = self.stats.forwards
            logits = self._prefill(group, B, is_ar)
            for i, r in enumerate(group):
                self._start(r, logits[i, -1] if is_ar else None)
                r.state.forwards = self.stats.forwards - f0
        self.stats.prefill_s += time.perf_counter() - t0
        return [r.state.row for r in rows]

    def _image_features(self, requests: list[RowRequest]) -> list[torch.Tensor | None]:
        """One vision-tower call for every new row's images (as collate_prompts); per-row slices."""
        with_px = [r.prompt for r in requests if r.prompt.pixel_values.numel()]
        if not with_px:
            return [None] * len(requests)
        px = torch.cat([p.pixel_values for p in with_px]).to(self.device)
        feats = fast_image_features(self.model, px, torch.cat([p.image_grid_thw for p in with_px]).to(self.device))
        img = self.model.config.image_token_id
        counts = [int((r.prompt.input_ids == img).sum()) if r.prompt.pixel_values.numel() else 0 for r in requests]
        if sum(counts) != feats.shape[0]:
            raise ValueError(f"{sum(counts)} image placeholder tokens but {feats.shape[0]} image features")
        parts = list(torch.split(feats, counts))
        return [part if r.prompt.pixel_values.numel() else None for part, r in zip(parts, requests)]

    def _place(self, req: RowRequest, feats: torch.Tensor | None) -> "_NewRow":
        """Positions, a slot and the prefill inputs of one new row (its K/V written by `_prefill`)."""
        mode, p = req.mode, req.prompt
        ids = p.input_ids.to(self.device)
        P = int(ids.shape[0])
        pos, delta = prompt_positions(self.model, ids, p.image_grid_thw.to(self.device))
        if delta > 0:  # M-RoPE never runs ahead of the token index; the step's RoPE table relies on it
            raise ValueError(f"prompt positions run {delta} ahead of the token index; the engine needs delta <= 0")
        n_pre = P if mode.kind == "ar" else (P // mode.block_size) * mode.block_size
        state = RowState(self._next_row, req.tag, mode, req.max_new_tokens, slot=-1, start=n_pre, tail=P - n_pre)
        self._next_row += 1
        slot = self.table.alloc(state)
        self.kv.clear(slot)
        return _NewRow(state, slot, ids, n_pre, delta, embed(self.model, ids[None, :n_pre], feats)[0], pos[:, :n_pre])

    def _start(self, r: "_NewRow", last_logits: torch.Tensor | None) -> None:
        """Per-slot state after prefill: the first AR token, or the first block (prompt tail + MASK)."""
        t, slot, B, n_pre = self.table, r.slot, r.state.mode.block_size, r.n_pre
        t.pos0[slot], t.delta[slot] = n_pre, r.delta
        t.has_prev[slot] = False
        t.fixed[slot] = False
        if r.state.mode.kind == "ar":
            t.cur[slot, 0] = last_logits.float().argmax()
        else:
            tail = r.ids.shape[0] - n_pre
            t.cur[slot, :B] = self.mask_id
            t.cur[slot, :tail] = r.ids[n_pre:]
            t.fixed[slot, :tail] = True
        self._by_row[r.state.row] = r.state
        if r.state.mode not in self._order:
            self._order.append(r.state.mode)

    def _prefill(self, group: list["_NewRow"], B: int, want_logits: bool) -> torch.Tensor | None:
        """Block-causal prefill of positions [0, L) of rows of equal L, in chunks of whole blocks.

        One forward per chunk for the whole group; returns the last position's logits (N, 1, V) for AR."""
        L = group[0].n_pre
        rows = torch.tensor([r.slot for r in group], device=self.device)
        emb = torch.stack([r.emb for r in group])  # (N, L, H)
        pos = torch.stack([r.pos for r in group], dim=1)  # (3, N, L)
        chunk = max(B, (self.cfg.prefill_chunk // B) * B)
        logits = None
        for c0 in range(0, L, chunk):
            c1 = min(L, c0 + chunk)
            p = torch.arange(c0, c1, device=self.device)[None].expand(len(group), -1)
            read = slice(c1 - c0 - 1, c1 - c0) if want_logits and c1 == L else slice(0, 0)
            logits = slot_forward(self.model, self.kv, rows, emb[:, c0:c1], pos[:, :, c0:c1], p,
                                  block_vis_end(p, B), c1, read)  # fmt: skip
            self.stats.forwards += 1
            self.stats.prefill_forwards += 1
        return logits

    # ---- stepping ----------------------------------------------------------------------------
    def cancel(self, row: int) -> None:
        """Free a running row's slot now; it produces no further events."""
        state = self._by_row.get(row)
        if state is None:
            raise KeyError(f"row {row} is not running")
        self._release(state)

    def _release(self, state: RowState) -> None:
        moved = self.table.free(state.slot)
        if moved is not None:
            src = self.table.running  # the vacated last slot
            self.kv.move(src, moved.slot, min(moved.start + MAX_BLOCK, self.kv.length))
        del self._by_row[state.row]

    def _next_group(self) -> tuple[RowMode, list[RowState]] | None:
        live = {s.mode for s in self.table.rows if s is not None}
        for i in range(len(self._order)):
            mode = self._order[(self._turn + i) % len(self._order)]
            if mode in live:
                self._turn = (self._turn + i + 1) % len(self._order)
                return mode, [s for s in self.table.rows[: self.table.running] if s is not None and s.mode == mode]
        return None

    @torch.no_grad()
    def step(self) -> list[RowEvent]:
        """Run one block (AR: one token) for the next mode group; one event per row of that group."""
        picked = self._next_group()
        if picked is None:
            return []
        mode, rows = picked
        t0 = time.perf_counter()
        sel = self.table.selector([r.slot for r in rows])
        self.stats.steps += 1
        self.stats.rows_per_step.append(len(rows))
        events = self._ar_step(rows, sel) if mode.kind == "ar" else self._block_step(mode, rows, sel)
        self.stats.decode_s += time.perf_counter() - t0
        return events

    def _sampler(self, mode: RowMode):
        if mode not in self._samplers:
            self._samplers[mode] = make_sampler(mode)
        return self._samplers[mode]

    def _read(self, x: torch.Tensor) -> list:
        self.stats.host_reads += 1
        return x.tolist()

    def _onestep_block(self, mode: RowMode, rows: list[RowState], sel) -> list[RowEvent]:
        """A one-step block without a trace: one forward, every non-fixed position takes its argmax
        (what OneStepSampler commits; no probabilities needed: log_softmax does not move an argmax).
        What the host knows (first block of a row or not, prompt tail or not) skips the work that only
        a row's first block needs."""
        B, n, t = mode.block_size, len(rows), self.table
        key_len = max(r.start for r in rows) + B
        first = any(r.blocks == 0 for r in rows)  # some row has no finished block yet (has_prev False)
        tail = any(r.tail for r in rows)  # some row's block starts with fixed prompt-tail tokens
        f0 = self.stats.forwards
        if mode.cache == "vanilla" and any(r.blocks for r in rows):
            self.runner.run(sel, n, B, "write", key_len - B, all_prev=not first)
            self.stats.forwards += 1
        kind = "fused" if mode.cache == "fused" else "noisy"
        logits = self.runner.run(sel, n, B, kind, key_len, all_prev=not first)
        self.stats.forwards += 1
        logits[..., self.mask_id] = float("-inf")  # MASK is never a final token
        cur = logits.argmax(dim=-1)  # (n, B): every position not fixed was MASK
        if tail:
            cur = torch.where(t.fixed[sel, :B], t.cur[sel, :B], cur)
        toks = self._read(cur)
        events = []
        for i, r in enumerate(rows):
            r.forwards += self.stats.forwards - f0
            events.append(self._finish(r, toks[i][r.tail :], 1, None))
        t.prev[sel, :B] = cur
        if tail:
            t.cur[sel, :B] = self.mask_id
            t.fixed[sel] = False
        if first:
            t.has_prev[sel] = True
        self._advance(rows, sel, B)
        self._free_finished(rows, events)
        return events

    def _advance(self, rows: list[RowState], sel, B: int) -> None:
        """The rows' next block starts B positions on; their prompt tail is behind them."""
        self.table.pos0[sel] += B
        for r in rows:
            r.start, r.tail = r.start + B, 0

    def _block_step(self, mode: RowMode, rows: list[RowState], sel) -> list[RowEvent]:
        B, n, t = mode.block_size, len(rows), self.table
        sampler = self._sampler(mode)
        if isinstance(sampler, OneStepSampler) and not mode.record_topk:
            return self._onestep_block(mode, rows, sel)
        key_len = max(r.start for r in rows) + B
        fixed = t.fixed[sel, :B].clone()
        masked = (t.cur[sel, :B] == self.mask_id) & ~fixed
        f0 = self.stats.forwards
        if mode.cache == "vanilla" and any(r.blocks for r in rows):
            self.runner.run(sel, n, B, "write", key_len - B)
            self.stats.forwards += 1
        plan = planned_steps(sampler, [B - r.tail for r in rows], B)
        want_trace = bool(mode.record_topk) or mode.kind == "multistep"
        rec = _Recorder(n, B, mode.record_topk, self.device) if want_trace else None
        step = 0
        while (step < plan) if plan is not None else bool(masked.any()):
            if plan is None:
                self.stats.host_reads += 1
            kind = "fused" if step == 0 and mode.cache == "fused" else "noisy"
            logits = self.runner.run(sel, n, B, kind, key_len).float()
            self.stats.forwards += 1
            logits[..., self.mask_id] = float("-inf")  # MASK is never a final token
            logp = torch.log_softmax(logits, dim=-1)
            conf, tok = logp.max(dim=-1)
            commit = sampler.select(conf.exp(), masked, step) & masked
            t.cur[sel, :B] = torch.where(commit, tok, t.cur[sel, :B])
            if rec is not None:
                rec.commit(commit, step, logp)
            masked &= ~commit
            step += 1
        cur = t.cur[sel, :B].clone()
        toks = self._read(cur)
        events = []
        for i, r in enumerate(rows):
            r.forwards += self.stats.forwards - f0
            trace = rec.trace(i, cur, fixed) if want_trace else None
            events.append(self._finish(r, toks[i][r.tail :], step, trace))
        t.prev[sel, :B] = cur
        t.cur[sel, :B] = self.mask_id
        t.fixed[sel] = False
        t.has_prev[sel] = True
        self._advance(rows, sel, B)
        self._free_finished(rows, events)
        return events

    def _ar_step(self, rows: list[RowState], sel) -> list[RowEvent]:
        toks = self._read(self.table.cur[sel, 0])
        events = [self._finish(r, [tok], 1, None) for r, tok in zip(rows, toks)]
        self._free_finished(rows, events)
        live = [r for r, ev in zip(rows, events) if not ev.finished]
        if live:
            sel = self.table.selector([r.slot for r in live])
            starts = {r.start for r in live}
            logits = self.runner.run(sel, len(live), 1, "ar", max(starts) + 1, full=len(starts) == 1)
            self.stats.forwards += 1
            self.table.cur[sel, 0] = logits[:, -1].float().argmax(dim=-1)
            self.table.pos0[sel] += 1
            for r in live:
                r.start += 1
                r.forwards += 1
        return events

    def _finish(self, r: RowState, toks: list[int], steps: int, trace) -> RowEvent:
        """Cut at EOS / the row's budget (as BlockDecoder._finish_block) and advance its counters."""
        budget = r.budget - r.generated
        finished = hit = False
        eos_at = toks.index(self.eos_id) if self.eos_id in toks else None
        if eos_at is not None and eos_at <= budget:
            toks, finished = toks[:eos_at], True
        elif len(toks) >= budget:
            toks, finished, hit = toks[:budget], True, True
        r.generated += len(toks)
        ev = RowEvent(r.row, r.tag, r.blocks, toks, finished, hit, steps, trace, r.forwards)
        r.blocks += 1
        return ev

    def _free_finished(self, rows: list[RowState], events: list[RowEvent]) -> None:
        # Highest slot first: compaction moves the last row, which must not be one still to free.
        done = sorted((r for r, ev in zip(rows, events) if ev.finished), key=lambda r: -r.slot)
        for r in done:
            self._release(r)


class _Recorder:
    """Commit steps and top-K of one block (DCD traces), kept on the device."""

    def __init__(self, n: int, B: int, K: int, device):
        self.K = K
        self.commit_step = torch.zeros((n, B), dtype=torch.long, device=device)
        self.ids = torch.zeros((n, B, K), dtype=torch.long, device=device) if K else None
        self.lp = torch.zeros((n, B, K), dtype=torch.float32, device=device) if K else None

    def commit(self, commit: torch.Tensor, step: int, logp: torch.Tensor) -> None:
        self.commit_step = torch.where(commit, torch.full_like(self.commit_step, step + 1), self.commit_step)
        if self.K:
            lp, ids = logp.topk(self.K, dim=-1)
            self.ids = torch.where(commit[..., None], ids, self.ids)
            self.lp = torch.where(commit[..., None], lp, self.lp)

    def trace(self, i: int, cur: torch.Tensor, fixed: torch.Tensor) -> BlockTrace:
        s = slice(i, i + 1)
        return BlockTrace(cur[s], fixed[s], self.commit_step[s], self.ids[s] if self.K else None,
                          self.lp[s] if self.K else None)  # fmt: skip

