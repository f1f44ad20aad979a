"""Benchmark: how quickly each phantom finding can be read from the model's view of the image.

The tiny VLM sees a frontal image at 112x112 (16 vision tokens). This trains a small CNN on the
same 112x112 frontal images of a fresh phantom corpus to predict each finding's label and prints its
held-out accuracy per finding every `--every` steps beside the majority-class rate. A finding still
at the majority rate after a few hundred steps is one the report models will under-call too (seed 3,
issue 16: the AR model recalled 2 of 39 consolidations when the CNN needed >400 steps for them).

Usage:
    python benchmarks/phantom_visibility.py                # 800 train / 300 test studies, 600 steps
    python benchmarks/phantom_visibility.py --steps 1000 --every 200
Last line: JSON {"majority": {...}, "accuracy": {"<step>": {...}}, "steps_to_95": {...}}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from echo_ray.data.phantom import read_phantom, write_phantom

FINDINGS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Support Devices")


def frontal_arrays(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, size, size) frontal images in [0, 1] and (N, F) labels of the corpus at `root`."""
    recs = read_phantom(root)
    x = np.stack([np.asarray(Image.open(r["images"][0]["path"]).resize((size, size)), dtype=np.float32) / 255 for r in recs])
    y = np.array([[r["labels"][f] for f in FINDINGS] for r in recs], dtype=np.float32)
    return torch.from_numpy(x)[:, None], torch.from_numpy(y)


def small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, stride=2, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(32 * 16, len(FINDINGS)),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom(Path(tmp) / "train", args.train, seed=args.seed)
        write_phantom(Path(tmp) / "test", args.test, seed=args.seed + 1)
        xtr, ytr = frontal_arrays(Path(tmp) / "train", args.size)
        xte, yte = frontal_arrays(Path(tmp) / "test", args.size)
    torch.manual_seed(0)
    net = small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    accuracy: dict[str, dict[str, float]] = {}
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(xtr), (32,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                acc = ((net(xte) > 0).float() == yte).float().mean(0)
            accuracy[str(step)] = {f: round(float(a), 3) for f, a in zip(FINDINGS, acc)}
            print(step, accuracy[str(step)], flush=True)
    majority = {f: round(float(max(p, 1 - p)), 3) for f, p in zip(FINDINGS, yte.mean(0))}
    first = {f: next((int(s) for s, a in accuracy.items() if a[f] >= 0.95), None) for f in FINDINGS}
    print(json.dumps({"majority": majority, "accuracy": accuracy, "steps_to_95": first}))


if __name__ == "__main__":
    main()
