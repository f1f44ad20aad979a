"""On-policy DCD records: the frozen teacher's conditionals on the student's own one-step reports.

method.md, "Stage 3: DCD", phase 1, with the prefix taken from the student (DAgger: Ross, Gordon and
Bagnell, "A Reduction of Imitation Learning and Structured Prediction to No-Regret Online Learning",
2011; on-policy distillation: Agarwal et al., "On-Policy Distillation of Language Models", 2024).
Off-policy records show the student only the teacher's own prefixes; decoding one step per block it
conditions on its own, and one slip (a doubled word, a dropped section) compounds over the
following blocks because it never saw such a prefix in training. Here the student decodes each
prompt one step per block (`student_reports`, on the static-slot engine), and the teacher labels
every block of that report in one pass over the RAD layout (`label_blocks`):
``[prompt | student report (clean) | all-MASK copy]``, S confidence-ordered steps over all noisy
blocks at once, block k seeing the prompt and the student's blocks < k (the RAD mask gives it the
decoder's view of that block; `tests/test_rad.py` checks layout == per-block decoding). Per response
position the record holds what an off-policy record holds (the token the teacher commits, the step,
the top-K at that step) plus `context`: the student's report, the clean copy the student trains on.

Usage:
    reports = student_reports(engine, prompts, block_size=8, max_new_tokens=160)   # [(tokens, hit_max)]
    contexts = [report_context(t, p.length, 8, eos) for (t, _), p in zip(reports, prompts)]
    labels = label_blocks(teacher_model, prompts, contexts, 8, steps=8, top_k=64, mask_id=m, pad_id=p)
"""

from __future__ import annotations

import numpy as np
import torch

from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.engine_modes import make_sampler
from echo_ray.model.forward import embed, extend_positions, image_features, lm_logits, prompt_positions
from echo_ray.model.masks import rad_mask
from echo_ray.model.prompt import StudyPrompt
from echo_ray.train.dcd.trajectory import PromptTask, TrajectoryRecord, renormalize_topk
from echo_ray.train.rad import collate_rad, stack_layouts
from echo_ray.train.rad_layout import pad_response, rad_layout


def student_reports(engine: DecodeEngine, prompts: list[StudyPrompt], block_size: int,
                    max_new_tokens: int) -> list[tuple[list[int], bool]]:  # fmt: skip
    """One-step decode of every prompt. -> per prompt (tokens before EOS, hit the length limit)."""
    tokens: list[list[int]] = [[] for _ in prompts]
    hit = [False] * len(prompts)
    for ev in EngineBatch(engine, prompts, RowMode("onestep", block_size), max_new_tokens).events():
        for i, toks in enumerate(ev.tokens):
            tokens[i].extend(toks)
            hit[i] = hit[i] or ev.hit_max[i]
    return list(zip(tokens, hit))


def report_context(tokens: list[int], prompt_len: int, block_size: int, eos_id: int) -> torch.Tensor:
    """The clean copy from a student report: its tokens, then EOS up to the block edge. -> (R',) long."""
    return pad_response(torch.tensor(tokens + [eos_id], dtype=torch.long), prompt_len, block_size, eos_id)


def _noisy_groups(layouts, width: int, block_size: int) -> tuple[torch.Tensor, list[int]]:
    """Flat (row * width + slot) indices of every noisy block, (G, B), and the block count per row."""
    groups, counts = [], []
    for i, lay in enumerate(layouts):
        n = lay.length - lay.clean_len  # the noisy copy starts and ends on block edges
        groups.append(i * width + lay.clean_len + torch.arange(n).view(-1, block_size))
        counts.append(n // block_size)
    return torch.cat(groups), counts


@torch.no_grad()
def label_blocks(model, prompts: list[StudyPrompt], contexts: list[torch.Tensor], block_size: int, steps: int,
                 top_k: int, mask_id: int, pad_id: int) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """The teacher's multi-step commits on every block of each context, all blocks denoised together.

    prompts[i]: the study's prompt (P_i tokens); contexts[i]: (R_i,) clean response with
    (P_i + R_i) % block_size == 0. Returns per row: tokens, commit_step (R_i,) long (1..steps),
    topk_ids (R_i, K) long and topk_logprobs (R_i, K) float32 (full-vocabulary log-probs, MASK
    excluded, at the step that committed the position), exactly the fields a multi-step decode traces.
    """
    layouts, positions = [], []
    for p, ctx in zip(prompts, contexts):
        lay = rad_layout(p.input_ids, ctx, block_size)
        pos, delta = prompt_positions(model, p.input_ids, p.image_grid_thw)
        layouts.append(lay)
        positions.append(extend_positions(pos, delta, lay.clean_len))
    stacked = stack_layouts(layouts, pad_id)
    cand = stacked["candidate"]
    rows = collate_rad(stacked, layouts, positions, cand, cand.float(), mask_id)
    device = next(model.parameters()).device
    ids, pos = rows["input_ids"].to(device), rows["position_ids"].to(device)
    mask = rad_mask(stacked["block"], stacked["is_noisy"], stacked["valid"]).to(device)
    feats = image_features(model, torch.cat([p.pixel_values for p in prompts]).to(device),
                           torch.cat([p.image_grid_thw for p in prompts]).to(device))  # fmt: skip
    width = ids.shape[1]
    gidx, counts = _noisy_groups(layouts, width, block_size)
    gidx = gidx.to(device)
    masked = cand.view(-1)[gidx.cpu()].to(device)  # prompt-tail slots of first blocks are never masked
    G, B = gidx.shape
    tok = torch.zeros((G, B), dtype=torch.long, device=device)
    step_of = torch.zeros((G, B), dtype=torch.long, device=device)
    top_ids = torch.zeros((G, B, top_k), dtype=torch.long, device=device)
    top_lp = torch.zeros((G, B, top_k), dtype=torch.float32, device=device)
    sampler = make_sampler(RowMode("multistep", block_size, steps=steps))
    step = 0
    while bool(masked.any()):
        logits = lm_logits(model, embed(model, ids, feats), pos, mask)
        logits = logits.view(-1, logits.shape[-1])[gidx]  # (G, B, V)
        logits[..., mask_id] = float("-inf")  # MASK is never a final token
        logp = torch.log_softmax(logits, dim=-1)
        conf, arg = logp.max(dim=-1)
        commit = sampler.select(conf.exp(), masked, step) & masked
        lp, kid = logp.topk(top_k, dim=-1)
        tok = torch.where(commit, arg, tok)
        step_of = torch.where(commit, torch.full_like(step_of, step + 1), step_of)
        top_ids = torch.where(commit[..., None], kid, top_ids)
        top_lp = torch.where(commit[..., None], lp, top_lp)
        ids.view(-1)[gidx[commit]] = arg[commit]
        masked &= ~commit
        step += 1
    out, g0 = [], 0
    for lay, n in zip(layouts, counts):
        keep = cand.view(-1)[gidx[g0 : g0 + n].cpu()].flatten().to(device)  # response slots of this row
        fields = {"tokens": tok, "commit_step": step_of, "topk_ids": top_ids, "topk_logprobs": top_lp}
        out.append({k: t[g0 : g0 + n].flatten(0, 1)[keep].cpu() for k, t in fields.items()})
        g0 += n
    return out


def on_policy_records(tasks: list[PromptTask], prompts: list[StudyPrompt], reports: list[tuple[list[int], bool]],
                      labels: list[dict[str, torch.Tensor]], contexts: list[torch.Tensor], block_size: int, steps: int,
                      eos_id: int, teacher: str = "", round_index: int = 0) -> list[TrajectoryRecord]:  # fmt: skip
    """Validated records: the teacher's labels as targets, the student's report as `context`."""
    out = []
    for task, prompt, (_, hit), lab, ctx in zip(tasks, prompts, reports, labels, contexts):
        renorm, mass = renormalize_topk(lab["topk_logprobs"].float())
        eos = torch.nonzero(lab["tokens"] == eos_id).flatten()
        rec = TrajectoryRecord(
            task=task,
            prompt_ids=prompt.input_ids.cpu().numpy().astype(np.int32),
            tokens=lab["tokens"].numpy().astype(np.int32),
            commit_step=lab["commit_step"].numpy().astype(np.int32),
            topk_ids=lab["topk_ids"].numpy().astype(np.int32),
            topk_logprobs=renorm.numpy().astype(np.float32),
            topk_logmass=mass.numpy().astype(np.float32),
            block_size=block_size,
            steps=steps,
            eos_pos=int(eos[0]) if len(eos) else -1,
            hit_max=hit,
            round=round_index,
            teacher=teacher,
            context=ctx.cpu().numpy().astype(np.int32),
        )
        rec.validate()
        out.append(rec)
    return out
