"""The normalization job: sources -> filter -> standardize -> dedup -> bilingual -> splits -> Parquet.

Runs on whatever Ray cluster `ray.init()` finds (a local one on a laptop, the cluster under
`ray job submit`). Output layout under `cfg.output` (local directory or s3://):
    manifest.json, echo_config.yaml
    train/ eval/ dcd/   part-<shard>.parquet (OUTPUT_SCHEMA; dcd rows are a subset of train rows)
    rejected/           every filtered / quarantined / deduplicated record with its reason
    _work/              resumable intermediate state (input shards, standardized and translated
                        shards, dedup result); a rerun with the same configuration resumes from it
A rerun with a different configuration over the same output is refused (ConfigError), since its
finished shards would not match. `progress(event, info)` receives "task_done", "shard_done" and
"stage_done" events as the run goes (logging shows the same lines).

Usage:
    manifest = run_pipeline(load_config("configs/tiny.yaml").normalize)
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional


from echo_ray.config import NormalizeConfig, save_config, to_dict
from echo_ray.data.pipeline.assemble import run_assemble
from echo_ray.data.pipeline.bilingual import kept_translations, run_bilingual
from echo_ray.data.pipeline.dedup import DEDUP_FILE, run_dedup
from echo_ray.data.pipeline.manifest import MANIFEST, build_manifest, summary_text
from echo_ray.data.pipeline.prepare import list_source_tasks, run_prepare
from echo_ray.data.pipeline.splits import Study, assign_splits, choose_dcd
from echo_ray.data.pipeline.standardize import STD_DIR, run_standardize
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.engines import make_engine
from echo_ray.errors import ConfigError

log = logging.getLogger("echo_ray.normalize")
Progress = Callable[[str, dict], None]
FINGERPRINT = "_work/fingerprint.json"


def fingerprint(cfg: NormalizeConfig) -> dict[str, Any]:
    """The settings that decide the content of finished shards (a resume must keep them)."""
    e = cfg.engine
    return {
        "sources": [to_dict(s) for s in cfg.sources],
        "shard_rows": cfg.shard_rows,
        "engine": {"kind": e.kind, "model_path": e.model_path, "prompt_version": e.prompt_version,
                   "max_retries": e.max_retries, "max_new_tokens": e.max_new_tokens,
                   "require_all_regions": e.require_all_regions},  # fmt: skip
        "seed": cfg.seed,
        "bilingual_fraction": cfg.bilingual_fraction,
    }


def _check_fingerprint(store: OutputStore, cfg: NormalizeConfig) -> bool:
    """True when resuming; ConfigError when the output holds a run with other settings."""
    want = fingerprint(cfg)
    if not store.exists(FINGERPRINT):
        store.write_json(FINGERPRINT, want)
        return False
    have = store.read_json(FINGERPRINT)
    if have != want:
        diff = sorted(k for k in want if have.get(k) != want[k])
        raise ConfigError(f"{store.uri} holds a normalization run with different settings ({', '.join(diff)}); "
                          "use another --output or delete it")  # fmt: skip
    return True


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)


def _plans(shards: list[str], dedup, split_of: dict[str, str], dcd: set) -> dict[str, dict[str, Any]]:
    """Per standardized shard: its rows' split, DCD picks and dedup pointers (every shard listed)."""
    plans: dict[str, dict[str, Any]] = {k: {"split": {}, "dcd": [], "dedup": {}} for k in shards}
    cols = [dedup.column(c).to_pylist() for c in ("uid", "shard", "duplicate_of", "similarity", "dedup_kind")]
    for uid, shard, dup, sim, kind in zip(*cols):
        p = plans[shard]
        if dup:
            p["dedup"][uid] = [dup, float(sim), kind]
        else:
            p["split"][uid] = split_of[uid]
            p["dcd"].extend([uid, lang] for lang in ("en", "zh") if (uid, lang) in dcd)
    return plans


def _split_plan(dedup, zh: set[str], cfg: NormalizeConfig) -> tuple[dict[str, str], set]:
    cols = [dedup.column(c).to_pylist() for c in ("uid", "source", "patient_id", "image_paths", "duplicate_of")]
    studies = [Study(u, s, p, list(im or []), u in zh) for u, s, p, im, d in zip(*cols) if not d]
    split_of = assign_splits(studies, cfg.splits)
    train = [(s.uid, "en", s.source) for s in studies if split_of[s.uid] == "train"]
    train += [(s.uid, "zh", s.source) for s in studies if split_of[s.uid] == "train" and s.has_zh]
    return split_of, choose_dcd(train, cfg.splits)


@contextmanager
def _stage(stages: dict[str, Any], name: str, progress: Progress) -> Iterator[dict[str, Any]]:
    """Time one stage; what the block puts in the yielded dict lands in the manifest's stages."""
    t0 = time.time()
    info: dict[str, Any] = {}
    yield info
    stages[name] = {**info, "seconds": round(time.time() - t0, 3)}
    progress("stage_done", {"stage": name, **stages[name]})


def run_pipeline(cfg: NormalizeConfig, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Run (or resume) the whole normalization job; returns the manifest it wrote."""
    progress = progress or (lambda event, info: None)
    store = OutputStore(cfg.output)
    tasks = list_source_tasks(cfg)  # unknown source / missing path fail here, before any work
    engine = make_engine(cfg.engine)
    _ensure_ray()
    resumed = _check_fingerprint(store, cfg)
    log.info("normalize -> %s (%s, engine %s)", store.uri, "resuming" if resumed else "new run", engine.kind)
    stages: dict[str, Any] = {}
    with _stage(stages, "prepare", progress) as st:
        prepare = run_prepare(tasks, store, cfg, progress)
        st["rows"] = sum(s["in"] for s in prepare)
    expected = {sh["key"]: sh["rows"] for s in prepare for sh in s["shards"]}
    shards = list(expected)
    with _stage(stages, "standardize", progress) as st:
        st.update(run_standardize(engine, store, expected, cfg, progress))
    with _stage(stages, "dedup", progress) as st:
        st.update(run_dedup(store, [f"{STD_DIR}/{k}.parquet" for k in shards], cfg))
    dedup = store.read_table(DEDUP_FILE)
    with _stage(stages, "translate", progress) as st:
        st.update(run_bilingual(engine, store, dedup, shards, cfg, progress))
    with _stage(stages, "assemble", progress) as st:
        split_of, dcd = _split_plan(dedup, kept_translations(store, shards), cfg)
        assembled = run_assemble(_plans(shards, dedup, split_of, dcd), store, cfg.num_cpus_per_task)
        st["shards"] = len(assembled)
    files = {d: store.listdir(d, ".parquet") for d in ("train", "eval", "dcd", "rejected")}
    engine_info = {**engine.describe(), "translates": engine.translates}
    manifest = build_manifest(prepare, assembled, stages, engine_info, to_dict(cfg), files)
    save_config(cfg, store.uri, section="normalize")
    store.write_json(MANIFEST, manifest)
    log.info("%s", summary_text(manifest).splitlines()[0])
    return manifest
