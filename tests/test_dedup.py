"""Stage 3 semantic dedup: planted near-duplicates are found (pointing at their kept twin), distinct
reports survive; the embedding actor pool runs on Ray Data with the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import numpy as np

from echo_ray.config import NormalizeConfig
from echo_ray.data.pipeline.dedup import DEDUP_FILE, greedy_within, kmeans, run_dedup
from echo_ray.data.pipeline.standardize import STD_SCHEMA
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.data.schema import image, new_record, to_table

DISTINCT = [
    "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax. No acute cardiopulmonary process.",
    "Large right pleural effusion with adjacent atelectasis. Heart size is normal. Right pleural effusion.",
    "Endotracheal tube terminates 4 cm above the carina. Nasogastric tube in the stomach. Lines and tubes in place.",
    "Moderate cardiomegaly with pulmonary vascular congestion and mild interstitial edema. Congestive heart failure.",
    "Left lower lobe consolidation concerning for pneumonia. Left lower lobe pneumonia.",
    "Right apical pneumothorax measuring 2 cm. No mediastinal shift. Right pneumothorax.",
    "Hyperinflated lungs with flattened diaphragms consistent with emphysema. COPD.",
    "A 1.5 cm nodule in the right upper lobe. Recommend CT for further evaluation. Pulmonary nodule.",
    "Healing fractures of the left fifth and sixth ribs. No pneumothorax. Left rib fractures.",
    "Dual-lead pacemaker with leads in the right atrium and ventricle. Cardiac pacemaker in place.",
]
# Planted near-duplicates: (index of the original, reworded copy).
NEAR = [
    (0, "The lungs are clear. The heart size is normal. No pleural effusion or pneumothorax. No acute cardiopulmonary process."),
    (1, "Large right pleural effusion with adjacent atelectasis. Heart size normal. Right pleural effusion."),
    (2, "Endotracheal tube terminates 4 cm above the carina. Nasogastric tube within the stomach. Lines and tubes in place."),
]
EXACT = (3, "  moderate cardiomegaly with pulmonary vascular congestion and mild interstitial edema.  Congestive heart failure.")


def test_greedy_and_kmeans_on_constructed_vectors():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16))
    x = np.concatenate([base, base[:2] + 0.01 * rng.normal(size=(2, 16))])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dup_of, sim = greedy_within(x, 0.99)
    assert dup_of.tolist() == [-1] * 6 + [0, 1] and (sim[6:] > 0.99).all()
    cents = kmeans(x, 3, iters=5, seed=0)
    assert cents.shape == (3, 16) and np.allclose(np.linalg.norm(cents, axis=1), 1.0)


def test_dedup_actor_pool_finds_planted_duplicates(ray_cluster, tmp_path):
    texts = DISTINCT + [t for _, t in NEAR] + [EXACT[1]]
    rows = []
    for i, t in enumerate(texts):
        r = new_record("phantom", f"s{i:02d}", raw_findings=t, images=[image(f"/img/{i}.png", "PA")])
        rows.append({**r, "shard": f"sh{i % 2}", "status": "kept", "findings": t, "impression": "", "labels": {}})
    rows.append({**rows[0], "uid": "phantom:q", "study_id": "q", "status": "quarantined", "shard": "sh0"})
    store = OutputStore(str(tmp_path / "out"))
    for sh in ("sh0", "sh1"):
        store.write_table(f"_work/standardize/{sh}.parquet", to_table([r for r in rows if r["shard"] == sh], STD_SCHEMA))
    cfg = NormalizeConfig(output=str(tmp_path / "out"))
    cfg.dedup.num_actors, cfg.dedup.batch_size, cfg.dedup.num_clusters = 1, 4, 3
    files = ["_work/standardize/sh0.parquet", "_work/standardize/sh1.parquet"]
    stats = run_dedup(store, files, cfg)
    assert (stats["rows"], stats["removed"]) == (len(texts), len(NEAR) + 1)  # the quarantined row is not embedded
    table = {r["uid"]: r for r in store.read_table(DEDUP_FILE).to_pylist()}
    uid = lambda i: f"phantom:s{i:02d}"  # noqa: E731
    assert all(table[uid(i)]["duplicate_of"] == "" for i in range(len(DISTINCT)))  # distinct reports kept
    for k, (orig, _) in enumerate(NEAR):  # each planted copy points at its original, semantically
        row = table[uid(len(DISTINCT) + k)]
        assert (row["duplicate_of"], row["dedup_kind"]) == (uid(orig), "near") and row["similarity"] >= 0.95
    exact = table[uid(len(texts) - 1)]
    assert (exact["duplicate_of"], exact["dedup_kind"]) == (uid(EXACT[0]), "exact")
    assert run_dedup(store, [], cfg)["removed"] == len(NEAR) + 1  # resumed from its marker


def test_oversized_clusters_are_split_but_duplicates_still_found():
    from echo_ray.data.pipeline.dedup import _clusters, semantic_dedup

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    x = np.concatenate([x, x[:50] + 1e-4])  # 50 planted near-copies
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = _clusters(x, np.arange(len(x)), 1, 10, 0, 1000, max_size=60)
    assert len(groups) > 1 and max(len(g) for g in groups) < len(x)  # the single cluster was split
    dup_of, _ = semantic_dedup(x, [str(i) for i in range(len(x))], 0.999, num_clusters=1, max_cluster=60)
    assert (dup_of[:300] == -1).all() and dup_of[300:].tolist() == list(range(50))
