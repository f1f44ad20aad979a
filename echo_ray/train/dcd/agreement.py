"""One-step agreement of a student with the teacher's multi-step output on held-out prompts.

The student decodes each held-out prompt one step per block (fused KV cache, the ECHO decoder).
A sequence is the tokens cut at the first EOS, plus that EOS when one was emitted (so stopping at
the right place counts). Agreement is position-wise exact match against the teacher sequence,
pooled over prompts: sum_i #{j < |T_i| : S_i[j] == T_i[j]} / sum_i |T_i|. A student that writes
the teacher's tokens shifted by one position scores low: this measures writing the same report,
not the same bag of words. `exact` is the fraction of prompts whose sequences are identical.

Usage:
    prompts = [build_prompt(...) for ...]
    out = onestep_agreement(model, prompts, teacher_tokens, mask_id, eos_id, pad_id, block_size, max_new_tokens)
    out["agreement"], out["exact"], out["tokens"]          # tokens: the student's sequences
"""

from __future__ import annotations

import torch

from echo_ray.decode.batch import collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.samplers import OneStepSampler
from echo_ray.model.prompt import StudyPrompt


def sequence(tokens: list[int], eos_id: int) -> list[int]:
    """Cut at the first EOS and keep it."""
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else list(tokens)


def teacher_sequence(tokens: list[int], eos_id: int, max_new_tokens: int) -> list[int]:
    """What the teacher emitted: up to and including its first EOS within the budget, else the budget."""
    if eos_id in tokens and tokens.index(eos_id) <= max_new_tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return list(tokens[:max_new_tokens])


def token_agreement(student: list[list[int]], teacher: list[list[int]]) -> float:
    """Pooled position-wise match of student against teacher sequences (already cut)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student sequences but {len(teacher)} teacher sequences")
    total = sum(len(t) for t in teacher)
    hits = sum(sum(1 for a, b in zip(s, t) if a == b) for s, t in zip(student, teacher))
    return hits / max(1, total)


@torch.no_grad()
def decode_onestep(model, prompts: list[StudyPrompt], mask_id: int, eos_id: int, pad_id: int, block_size: int,
                   max_new_tokens: int, batch_size: int = 8) -> list[list[int]]:  # fmt: skip
    """One-step, fused-cache decode; returns per prompt the tokens with the EOS kept (see `sequence`)."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = collate_prompts(model, chunk, block_size, pad_id, mask_id)
        dec = BlockDecoder(model, mask_id, eos_id, block_size, OneStepSampler(), "fused", max_new_tokens)
        toks: list[list[int]] = [[] for _ in chunk]
        ended = [False] * len(chunk)
        for ev in dec.stream(batch):
            for i, t in enumerate(ev.tokens):
                if not ended[i]:
                    toks[i].extend(t)
                    # the decoder cuts the EOS itself; a row that finished without hitting the limit ended on EOS
                    if ev.finished[i]:
                        ended[i] = True
                        if not ev.hit_max[i]:
                            toks[i].append(eos_id)
        out.extend(toks)
    return out


def onestep_agreement(model, prompts: list[StudyPrompt], teacher: list[list[int]], mask_id: int, eos_id: int,
                      pad_id: int, block_size: int, max_new_tokens: int) -> dict:  # fmt: skip
    """Decode the student one step per block and compare with the teacher's sequences."""
    was_training = model.training
    model.eval()
    try:
        student = decode_onestep(model, prompts, mask_id, eos_id, pad_id, block_size, max_new_tokens)
    finally:
        model.train(was_training)
    teacher = [teacher_sequence(list(t), eos_id, max_new_tokens) for t in teacher]
    return {
        "agreement": token_agreement(student, teacher),
        "exact": sum(s == t for s, t in zip(student, teacher)) / max(1, len(teacher)),
        "tokens": student,
    }
