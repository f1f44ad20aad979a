"""The RAD training row: ``[prompt | clean response | noisy response]`` (method.md, "Stage 2: RAD").

Only the response is duplicated. With prompt length P, block size B and a response padded with EOS
to R' tokens so that P + R' is a multiple of B, the clean sequence has T = P + R' tokens and the
noisy copy covers clean positions [s, T) where s = (P // B) * B is the block boundary at or before
the response start: its first block carries the prompt tail (never masked) next to the first
response tokens, exactly like the first decode block of `echo_ray.decode.batch`. Every noisy token
keeps the block index and the M-RoPE position ids of the clean position it copies, so
`echo_ray.model.masks.rad_mask` gives it the view a decoder has of that block: prompt and clean
tokens of earlier blocks plus its own (noisy) block. Tokens per row: T + (T - s) ~= P + 2R,
against 2(P + R) when the whole sequence is duplicated (`full_duplication_layout`, the prior
two-copy recipe, kept for the benchmark).

Usage:
    resp = pad_response(response_ids, prompt_len=P, block_size=8, eos_id=eos)    # (R',)
    lay = rad_layout(prompt_ids, resp, block_size=8)
    pos = full_pos[:, lay.source]                                                 # (3, L)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RadLayout:
    """One row, L = T + (T - s) tokens. All tensors (L,) on the CPU.

    ids: clean token ids at every slot (the noisy copy before masking);
    source: clean position each slot stands for (identity on the clean part);
    block: absolute block index of `source`; is_noisy: slot belongs to the noisy copy;
    candidate: noisy slot holding a response token (may be masked; prompt-tail slots never are).
    """

    ids: torch.Tensor
    source: torch.Tensor
    block: torch.Tensor
    is_noisy: torch.Tensor
    candidate: torch.Tensor
    prompt_len: int
    clean_len: int  # T = P + R'
    noisy_start: int  # s: first clean position copied into the noisy stream

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])

    @property
    def response_len(self) -> int:
        return self.clean_len - self.prompt_len


def padded_response_len(prompt_len: int, response_len: int, block_size: int) -> int:
    """Smallest R' >= R with (P + R') % B == 0."""
    end = prompt_len + response_len
    return -(-end // block_size) * block_size - prompt_len


def pad_response(response: torch.Tensor, prompt_len: int, block_size: int, eos_id: int) -> torch.Tensor:
    """Pad with EOS so the clean sequence ends on a block edge. (R,) -> (R',), R' - R < B."""
    if response.ndim != 1 or response.numel() == 0:
        raise ValueError("response must be a non-empty 1-D tensor of token ids")
    extra = padded_response_len(prompt_len, int(response.numel()), block_size) - int(response.numel())
    return torch.cat([response, torch.full((extra,), eos_id, dtype=response.dtype)])


def rad_layout(prompt: torch.Tensor, response: torch.Tensor, block_size: int) -> RadLayout:
    """Build the asymmetric row. prompt: (P,); response: (R',) already block-padded (`pad_response`)."""
    P, R = int(prompt.numel()), int(response.numel())
    T = P + R
    if T % block_size:
        raise ValueError(f"prompt + response = {T} tokens is not a multiple of the block size {block_size}")
    s = (P // block_size) * block_size
    clean = torch.cat([prompt, response]).long()
    noisy_src = torch.arange(s, T)
    source = torch.cat([torch.arange(T), noisy_src])
    return RadLayout(
        ids=torch.cat([clean, clean[s:]]),
        source=source,
        block=torch.div(source, block_size, rounding_mode="floor"),
        is_noisy=torch.cat([torch.zeros(T, dtype=torch.bool), torch.ones(T - s, dtype=torch.bool)]),
        candidate=torch.cat([torch.zeros(T, dtype=torch.bool), noisy_src >= P]),
        prompt_len=P,
        clean_len=T,
        noisy_start=s,
    )


def full_duplication_layout(prompt: torch.Tensor, response: torch.Tensor, block_size: int) -> RadLayout:
    """The two-copy baseline: the whole ``[prompt | response]`` twice (2T tokens). Benchmark only."""
    lay = rad_layout(prompt, response, block_size)
    T = lay.clean_len
    source = torch.cat([torch.arange(T), torch.arange(T)])
    return RadLayout(
        ids=torch.cat([lay.ids[:T], lay.ids[:T]]),
        source=source,
        block=torch.div(source, block_size, rounding_mode="floor"),
        is_noisy=torch.cat([torch.zeros(T, dtype=torch.bool), torch.ones(T, dtype=torch.bool)]),
        candidate=torch.cat([torch.zeros(T, dtype=torch.bool), torch.arange(T) >= lay.prompt_len]),
        prompt_len=lay.prompt_len,
        clean_len=T,
        noisy_start=0,
    )
