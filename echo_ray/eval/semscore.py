"""SemScore: mean cosine similarity of sentence embeddings of generated vs reference reports.

Reference: Aynetdinov & Akbik, "SemScore: Automated Evaluation of Instruction-Tuned LLMs based on
Semantic Textual Similarity", 2024 (the metric the ECHO paper reports). The embeddings come from
echo_ray.clinical.encoder.SentenceEncoder (default all-MiniLM-L6-v2, loaded offline).

Usage:
    enc = SentenceEncoder()
    semscore(predictions, references, enc)  # float in [-1, 1]
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from echo_ray.clinical.encoder import SentenceEncoder
from echo_ray.errors import InputError


def semscore(preds: list[str], refs: list[str], encoder: Optional[SentenceEncoder] = None) -> float:
    """Mean over pairs of cos(embed(pred_i), embed(ref_i)); `encoder` None loads the default."""
    if len(preds) != len(refs):
        raise InputError(f"{len(preds)} predictions but {len(refs)} references; they must pair up")
    if not preds:
        raise InputError("no prediction/reference pairs to score")
    enc = encoder or SentenceEncoder()
    p, r = enc.encode(list(preds)), enc.encode(list(refs))
    return float(np.mean(np.sum(p * r, axis=1)))
