"""An exponential moving average of the trained weights (Polyak averaging), kept beside the optimizer.

After every optimizer step, for each trainable weight w: ema <- decay * ema + (1 - decay) * w. The
average starts from the weights training starts from, with no bias correction or early ramp: a
DCD student starts as a good one-step decoder (the teacher), and the average is meant to leave it
slowly. A run much shorter than 1 / (1 - decay) steps therefore exports mostly its initial weights.

Why (issue 31): the DCD student's held-out agreement with its teacher swung by 0.1-0.25 between
rounds with the last step's weights, worst right after warm-up, where it fell well below the
teacher's own one-step score it started from. The average of the last ~1 / (1 - decay) steps
did not dip and ended level with the last step (measurements in docs/method.md). Scoring,
best-round keeping and export use the average; the optimizer keeps training the raw weights, and
resuming restores both.

`swapped()` puts the average into the model's own parameter tensors in place and back
afterwards (a per-tensor temporary, so no second copy of the model): it works wherever every rank
holds whole weights (DDP, ZeRO-1/2; ZeRO-2's flat buffers are views the copy writes through).
ZeRO-3 partitions the weights, so `train.<stage>.ema_decay` > 0 is refused there
(`backends.check_average`, on the driver before any worker starts).

Usage:
    ema = WeightAverage(trainable_params, decay=0.99)
    ema.update()                      # after each optimizer step
    with ema.swapped():               # score or export the averaged weights
        evaluate(model)
    ema.save(dir); ema.load(dir)      # resume
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from echo_ray.errors import InputError

EMA_FILE = "ema.safetensors"


class WeightAverage:
    """EMA of `params` (the trainable weights, in order); see the module docstring."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.params, self.decay = list(params), decay
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def _exchange(self) -> None:
        for p, a in zip(self.params, self.average):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the block; the trained ones back afterwards."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"{i}": a.detach().cpu().contiguous() for i, a in enumerate(self.average)}
        save_file(tensors, str(out_dir / EMA_FILE), metadata={"updates": str(self.updates), "decay": str(self.decay)})

    def load(self, ckpt_dir: Path) -> None:
        from safetensors import safe_open

        path = ckpt_dir / EMA_FILE
        if not path.is_file():
            raise InputError(f"the run averages its weights (ema_decay={self.decay}) but {path} is missing")
        with safe_open(str(path), framework="pt") as f:
            if len(f.keys()) != len(self.average):
                raise InputError(f"{path} holds {len(f.keys())} tensors, the model trains {len(self.average)}")
            with torch.no_grad():
                for i, a in enumerate(self.average):
                    a.copy_(f.get_tensor(f"{i}"))
            self.updates = int(f.metadata().get("updates", "0"))


@contextlib.contextmanager
def averaged(ema: WeightAverage | None) -> Iterator[None]:
    """`ema.swapped()`, or nothing when the run keeps no average."""
    if ema is None:
        yield
    else:
        with ema.swapped():
            yield
