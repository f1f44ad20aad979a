"""Phantom corpus: layout, determinism, synthetic labelling, and labels recoverable from pixels."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from echo_ray.data.phantom import OBSERVATIONS, SYNTHETIC_NOTE, read_phantom, write_phantom


def test_layout_and_labels(tmp_path) -> None:
    write_phantom(tmp_path, 10, seed=3)
    assert SYNTHETIC_NOTE in (tmp_path / "README.txt").read_text()
    recs = [json.loads(line) for line in (tmp_path / "studies.jsonl").read_text().splitlines()]
    assert len(recs) == 10 and len({r["study_id"] for r in recs}) == 10
    for r in recs:
        assert r["synthetic"] is True
        assert set(r["labels"]) == set(OBSERVATIONS)
        img = Image.open(tmp_path / r["images"][0]["path"])
        assert img.mode == "L" and img.size == (256, 256)
        assert "SYNTHETIC" in img.info["Description"]
        text = (tmp_path / r["report_path"]).read_text()
        assert "EXAMINATION:" in text and ("FINDINGS:" in text or "IMPRESSION:" in text)
        positives = [k for k, v in r["labels"].items() if v and k not in ("No Finding", "Support Devices")]
        assert r["labels"]["No Finding"] == int(not positives)


def test_deterministic_for_seed(tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_phantom(a, 4, seed=7)
    write_phantom(b, 4, seed=7)
    write_phantom(c, 4, seed=8)
    assert (a / "studies.jsonl").read_bytes() == (b / "studies.jsonl").read_bytes()
    rec = read_phantom(a)[0]
    img_a = (a / "images" / f"{rec['study_id']}_PA.png").read_bytes()
    assert img_a == (b / "images" / f"{rec['study_id']}_PA.png").read_bytes()
    assert (a / "studies.jsonl").read_text() != (c / "studies.jsonl").read_text()


TARGETS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Support Devices")


def _arrays(root, size: int = 64):
    recs = read_phantom(root)
    x = np.stack([np.asarray(Image.open(r["images"][0]["path"]).resize((size, size)), dtype=np.float32) / 255 for r in recs])
    y = np.array([[r["labels"][t] for t in TARGETS] for r in recs], dtype=np.float32)
    return torch.from_numpy(x)[:, None], torch.from_numpy(y)


def test_small_cnn_recovers_labels_from_images(tmp_path) -> None:
    """What makes the demo's quality numbers mean something: findings are visible in the pixels."""
    write_phantom(tmp_path / "train", 160, seed=1)
    write_phantom(tmp_path / "test", 60, seed=2)
    xtr, ytr = _arrays(tmp_path / "train")
    xte, yte = _arrays(tmp_path / "test")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 5, stride=2, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, len(TARGETS)),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(xtr), (32,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (net(xte) > 0).float()
    acc = (pred == yte).float().mean(dim=0)
    majority = torch.maximum(yte.mean(dim=0), 1 - yte.mean(dim=0))
    assert float(acc.mean()) > float(majority.mean()) + 0.08, (acc, majority)
    assert float(acc.mean()) > 0.85
