"""Normalization throughput with the rules engine on the full IU X-ray corpus, 1 vs 2 actors.

Runs the whole job (prepare -> standardize -> dedup -> splits -> Parquet) twice on a local Ray
cluster, each time into a fresh output, with the engine and embedding actor pools at 1 and then 2
actors (one CPU each). Reports records/s per stage (from the manifests), the wall-time ratio
t(1 actor) / t(2 actors) for the whole job and for the two actor-pool stages, and `accounted`
(every input record is in the manifest as kept, filtered, deduplicated or quarantined).
The IU tables ship without images, so image existence is not required (require_images=False).

Usage:
    python benchmarks/normalize.py --json
    python benchmarks/normalize.py --json --iu /data/iu_xray_kaggle --actors 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IU = REPO.parent / "shared" / "data" / "iu_xray_kaggle"


def run_once(iu: Path, out: Path, actors: int) -> dict:
    from echo_ray.config import NormalizeConfig, SourceSpec
    from echo_ray.data.pipeline.driver import run_pipeline

    cfg = NormalizeConfig(output=str(out), sources=[SourceSpec(name="iu_xray", path=str(iu), require_images=False)])
    cfg.engine.num_actors = cfg.dedup.num_actors = actors
    cfg.engine.num_cpus_per_actor = 1.0
    t0 = time.perf_counter()
    manifest = run_pipeline(cfg)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "manifest": manifest}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--iu", default=str(DEFAULT_IU), help="IU X-ray Kaggle export (indiana_reports.csv ...)")
    p.add_argument("--actors", type=int, nargs=2, default=[1, 2], metavar=("A", "B"))
    args = p.parse_args()
    iu = Path(args.iu)
    if not (iu / "indiana_reports.csv").is_file():
        print(json.dumps({"skipped": f"IU X-ray tables not found under {iu}"}))
        return 0
    import logging

    import ray

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the pipeline's progress lines on stderr
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="echo_norm_bench_") as tmp:
        for a in args.actors:
            runs[a] = run_once(iu, Path(tmp) / f"actors{a}", a)
            print(f"actors={a}: {runs[a]['wall_s']} s", file=sys.stderr)
    a, b = args.actors
    stages = lambda r: r["manifest"]["stages"]  # noqa: E731
    ratio = lambda name: round(stages(runs[a])[name]["seconds"] / max(stages(runs[b])[name]["seconds"], 1e-9), 3)  # noqa: E731
    m = runs[b]["manifest"]
    result = {
        "benchmark": "normalize",
        "corpus": "iu_xray (full, rules engine)",
        "cpus": os.cpu_count(),
        "records_in": m["counts"]["in"],
        "counts": m["counts"],
        "records_per_s": {"overall": round(m["counts"]["in"] / runs[b]["wall_s"], 2), **m["records_per_s"]},
        "records_per_s_by_actors": {
            str(k): {"overall": round(r["manifest"]["counts"]["in"] / r["wall_s"], 2), **r["manifest"]["records_per_s"]}
            for k, r in runs.items()
        },
        "wall_s": {str(k): r["wall_s"] for k, r in runs.items()},
        "stage_seconds": {str(k): {s: v["seconds"] for s, v in stages(r).items()} for k, r in runs.items()},
        f"actors_{b}_vs_{a}_speedup": round(runs[a]["wall_s"] / runs[b]["wall_s"], 3),
        "stage_speedup": {"standardize": ratio("standardize"), "dedup": ratio("dedup")},
        "accounted": all(r["manifest"]["accounted"] for r in runs.values()),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
