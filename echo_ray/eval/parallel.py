"""Decode an evaluation split on a Ray cluster: a Ray Data actor pool, one generator per actor.

Each actor loads the checkpoint once (an s3:// checkpoint is mirrored into the actor's own cache,
so nodes need no shared disk) and decodes batches of `eval.batch_size` studies, reading their
images itself. The records are those of echo_ray.eval.decoding (same keys, same speed accounting:
per-batch wall time, model loading excluded), returned in study order. Used when
`eval.num_actors > 0`; `eval.num_gpus_per_actor` puts each generator on a GPU.

Usage:
    records = decode_with_ray(planned, split.studies, "en", cfg.eval, cfg.prompt, cfg.model)
"""

from __future__ import annotations

import uuid
from typing import Any

from echo_ray.config import DecodeConfig, EvalConfig, ModelConfig, PromptConfig
from echo_ray.eval.plan import PlannedRow
from echo_ray.eval.split import EvalStudy
from echo_ray.storage import is_s3

FIELDS = ("study_id", "text", "tokens", "forward_passes", "latency_s", "hit_max_length", "complete", "batch", "batch_s")


class _GeneratorActor:
    """Ray Data callable class: holds one ReportGenerator, decodes pyarrow batches of studies."""

    def __init__(self, model: str, decode: dict, override_block: bool, prompt: dict, model_cfg: dict,
                 device: str, language: str):  # fmt: skip
        from echo_ray.config import from_dict
        from echo_ray.eval.decoding import load_generator

        self.language = language
        self.gen = load_generator(
            model, from_dict(DecodeConfig, decode), override_block, from_dict(PromptConfig, prompt),
            from_dict(ModelConfig, model_cfg), device,
        )  # fmt: skip

    def __call__(self, batch) -> dict[str, list]:
        from echo_ray.eval.decoding import decode_batch

        rows = batch.to_pylist()
        studies = [EvalStudy(r["study_id"], "", self.language, "", tuple(r["image_paths"])) for r in rows]
        records = decode_batch(self.gen, studies, self.language, uuid.uuid4().hex)
        out: dict[str, list] = {"index": [r["index"] for r in rows]}
        for key in FIELDS:
            out[key] = [rec[key] for rec in records]
        return out


def _plain(cfg: Any) -> dict:
    """Config dataclass -> dict that from_dict accepts again (tuples stay lists)."""
    from echo_ray.config import to_dict

    return to_dict(cfg)


def decode_with_ray(row: PlannedRow, studies: list[EvalStudy], language: str, eval_cfg: EvalConfig,
                    prompt_cfg: PromptConfig, model_cfg: ModelConfig) -> list[dict[str, Any]]:  # fmt: skip
    """Decode `studies` with an actor pool of `eval_cfg.num_actors` generators; records in study order."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init()  # joins the job's cluster under `ray job submit`, else starts a local one
    items = [{"index": i, "study_id": s.study_id, "image_paths": list(s.image_paths)} for i, s in enumerate(studies)]
    # An s3:// checkpoint is mirrored by each actor; a local one is passed as an absolute path.
    model = row.model if is_s3(row.model) else str(row.local)
    ds = ray.data.from_items(items).map_batches(
        _GeneratorActor,
        fn_constructor_kwargs={
            "model": model, "decode": _plain(row.decode), "override_block": row.override_block,
            "prompt": _plain(prompt_cfg), "model_cfg": _plain(model_cfg), "device": eval_cfg.device,
            "language": language,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=eval_cfg.num_actors),
        batch_size=max(1, eval_cfg.batch_size),
        batch_format="pyarrow",
        num_cpus=eval_cfg.num_cpus_per_actor,
        num_gpus=eval_cfg.num_gpus_per_actor,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["index"])
    if len(rows) != len(studies):
        raise RuntimeError(f"Ray decoding returned {len(rows)} reports for {len(studies)} studies")
    return [{k: r[k] for k in FIELDS} for r in rows]
