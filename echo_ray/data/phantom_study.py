"""The sampled ground truth of one phantom study (SYNTHETIC; see echo_ray.data.phantom).

Images (echo_ray.data.phantom) and report text (echo_ray.data.phantom_text) are both rendered from
a `PhantomStudy`, so it sits below both of them.

Usage:
    s = sample_study(np.random.default_rng(0), "p0")
    s.labels()["Cardiomegaly"]          # 0 or 1, the CheXpert observation set
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip


@dataclass
class PhantomStudy:
    """The sampled ground truth of one study; images and text are rendered from it."""

    study_id: str
    cardiomegaly: bool = False
    effusion_side: str = ""  # "", "left", "right"
    pneumothorax_side: str = ""
    consolidation_lobe: str = ""  # "", "right lower", "left lower", "right upper"
    edema: bool = False
    devices: list[str] = field(default_factory=list)  # "ett", "line", "pacemaker"
    lateral: bool = False

    def labels(self) -> dict[str, int]:
        pos = {
            "Cardiomegaly": self.cardiomegaly,
            "Enlarged Cardiomediastinum": self.cardiomegaly,
            "Pleural Effusion": bool(self.effusion_side),
            "Pneumothorax": bool(self.pneumothorax_side),
            "Consolidation": bool(self.consolidation_lobe),
            "Edema": self.edema,
            "Lung Opacity": bool(self.consolidation_lobe) or self.edema,
            "Support Devices": bool(self.devices),
        }
        labels = {o: int(pos.get(o, False)) for o in OBSERVATIONS}
        labels["No Finding"] = int(not any(v for k, v in pos.items() if k != "Support Devices"))
        return labels


def sample_study(rng: np.random.Generator, study_id: str) -> PhantomStudy:
    """Draw findings with roughly balanced prevalence (each finding 20-35 %)."""
    s = PhantomStudy(study_id=study_id, lateral=bool(rng.random() < 0.3))
    if rng.random() < 0.3:
        return s  # a normal study
    s.cardiomegaly = bool(rng.random() < 0.35)
    s.effusion_side = str(rng.choice(["left", "right"])) if rng.random() < 0.3 else ""
    s.pneumothorax_side = str(rng.choice(["left", "right"])) if rng.random() < 0.2 else ""
    if rng.random() < 0.25:
        s.consolidation_lobe = str(rng.choice(["right lower", "left lower", "right upper"]))
    s.edema = bool(rng.random() < 0.15)
    if rng.random() < 0.3:
        k = int(rng.integers(1, 3))
        s.devices = sorted(str(d) for d in rng.choice(["ett", "line", "pacemaker"], size=k, replace=False))
    return s
