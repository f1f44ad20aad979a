"""Per-step training metrics on rank 0: TensorBoard scalars, a JSON-lines log, a progress line.

Files go to `<output_dir>/tb` (point `tensorboard --logdir` at it) and `<output_dir>/metrics.jsonl`
(one object per step, with the study ids rank 0 trained on, so a resumed run can be audited).
For an s3:// output_dir they are written to a local directory and uploaded on `sync()` (at every
checkpoint and at the end). Ray Train gets the same numbers through `ray.train.report`.

Usage:
    logger = MetricsLogger("runs/rad", "rad", max_steps=50, log_every=1)
    logger.log(step, {"loss": 3.2, "tokens_per_s": 900.0, "lr": 1e-3, "grad_norm": 0.8}, {"study_ids": [...]})
    logger.close()
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from echo_ray.storage import exists, is_s3, join, read_text, upload_dir

SCALARS = ("loss", "tokens_per_s", "lr", "grad_norm")


def worker_line(line: str) -> None:
    """Print one line from a Ray Train worker exactly once.

    Ray Train patches `print` in its workers to log through the root logger and, when stdout is
    wrapped (as Ray's log forwarding does), also to tee to stdout: every printed line reached the
    driver twice. Writing to the stream directly sidesteps the patch.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def progress_line(stage: str, step: int, max_steps: int, m: dict[str, float], eta_s: float) -> str:
    """`[rad] step 12/50 (24%) | loss 3.4120 | 1,234 tok/s | lr 9.80e-04 | gnorm 1.230 | epoch 0 | eta 2m10s`."""
    eta = f"{int(eta_s // 60)}m{int(eta_s % 60):02d}s"
    return (
        f"[{stage}] step {step}/{max_steps} ({100 * step // max(1, max_steps)}%) | loss {m['loss']:.4f} | "
        f"{m['tokens_per_s']:,.0f} tok/s | lr {m['lr']:.2e} | gnorm {m['grad_norm']:.3f} | "
        f"epoch {int(m.get('epoch', 0))} | eta {eta}"
    ) + (f" | image gap {m['image_gap']:+.4f}" if "image_gap" in m else "")


class MetricsLogger:
    def __init__(self, output_dir: str, stage: str, max_steps: int, log_every: int = 1):
        from torch.utils.tensorboard import SummaryWriter

        self.remote = output_dir if is_s3(output_dir) else None
        self.local = Path(tempfile.mkdtemp(prefix=f"echo_{stage}_logs_")) if self.remote else Path(output_dir)
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote and exists(join(self.remote, "metrics.jsonl")):  # a resumed run appends to it
            (self.local / "metrics.jsonl").write_text(read_text(join(self.remote, "metrics.jsonl")), encoding="utf-8")
        self.stage, self.max_steps, self.log_every = stage, max_steps, max(1, log_every)
        self.writer = SummaryWriter(str(self.local / "tb"))
        self.jsonl = open(self.local / "metrics.jsonl", "a", encoding="utf-8")
        self.t0, self.first_step = time.perf_counter(), None

    def log(self, step: int, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> None:
        if self.first_step is None:
            self.first_step = step - 1
        for k, v in metrics.items():
            self.writer.add_scalar(f"{self.stage}/{k}", v, step)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics, **(extra or {})}) + "\n")
        self.jsonl.flush()
        if step % self.log_every == 0 or step == self.max_steps:
            done = step - self.first_step
            eta = (time.perf_counter() - self.t0) / max(1, done) * (self.max_steps - step)
            worker_line(progress_line(self.stage, step, self.max_steps, metrics, eta))

    def write_json(self, name: str, payload: Any) -> None:
        """A small JSON file beside metrics.jsonl (uploaded with the logs on `sync()`)."""
        (self.local / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")

    def sync(self) -> None:
        self.writer.flush()
        if self.remote:
            upload_dir(self.local, self.remote)

    def close(self) -> None:
        self.sync()
        self.writer.close()
        self.jsonl.close()
