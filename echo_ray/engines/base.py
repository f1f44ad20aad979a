"""The small interface every text engine implements, and the shared validate-and-retry loop.

An engine turns a Ray Dataset into a Dataset with the same rows (same count, all columns kept)
plus four output columns. Input columns are prepared by the pipeline stage:
    src_findings, src_impression, src_indication   (raw sections to standardize, or normalized
                                                    English sections to translate)
Output columns:
    out_findings, out_impression   the validated result ("" when the record failed)
    out_error                      "" on success, else why the record is quarantined
    out_attempts                   generations used (0 for the rules engine's translation: none)
Engines never raise for one bad record; they report it in out_error.

Usage:
    engine = make_engine(cfg.engine)          # echo_ray.engines
    out = engine.apply(ds, "standardize")    # lazily adds the out_* columns
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import pyarrow as pa

from echo_ray.config import EngineConfig
from echo_ray.engines.prompts import build_prompt, retry_prompt, validate_output

IN_COLUMNS = ("src_findings", "src_impression", "src_indication")
OUT_FIELDS = [
    ("out_findings", pa.string()),
    ("out_impression", pa.string()),
    ("out_error", pa.string()),
    ("out_attempts", pa.int32()),
]


@dataclass
class EngineResult:
    findings: str = ""
    impression: str = ""
    error: str = ""
    attempts: int = 0


class TextEngine(ABC):
    """Standardization (and, where supported, translation) over a Ray Dataset."""

    kind: ClassVar[str]
    translates: ClassVar[bool] = False  # False: the bilingual stage is skipped, said once
    streaming: ClassVar[bool] = True  # False: apply() materializes (retry rounds), run in waves

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg

    @abstractmethod
    def apply(self, ds, task: str):
        """`ds` -> Dataset with the out_* columns added (see module doc)."""

    def describe(self) -> dict:
        return {"kind": self.kind, "model_path": self.cfg.model_path, "prompt_version": self.cfg.prompt_version}


def with_outputs(batch: pa.Table, results: list[EngineResult]) -> pa.Table:
    """`batch` plus the out_* columns (replacing any from an earlier round)."""
    values = {
        "out_findings": [r.findings for r in results],
        "out_impression": [r.impression for r in results],
        "out_error": [r.error for r in results],
        "out_attempts": [r.attempts for r in results],
    }
    for name, typ in OUT_FIELDS:
        if name in batch.column_names:
            batch = batch.drop_columns([name])
        batch = batch.append_column(pa.field(name, typ), pa.array(values[name], type=typ))
    return batch


def inputs(batch: pa.Table) -> list[tuple[str, str, str]]:
    cols = [batch.column(c).to_pylist() for c in IN_COLUMNS]
    return [tuple(x or "" for x in row) for row in zip(*cols)]  # type: ignore[misc]


Generate = Callable[[list[tuple[str, str]]], list[str]]


def generate_validated(
    generate: Generate, rows: list[tuple[str, str, str]], task: str, cfg: EngineConfig
) -> list[EngineResult]:
    """Prompt, validate, and re-prompt failures with their error, up to cfg.max_retries times.

    `generate` maps [(system, user)] to answer texts (one per prompt, same order).
    """
    prompts = [build_prompt(cfg.prompt_version, task, f, i, ind) for f, i, ind in rows]
    current = list(prompts)
    results = [EngineResult() for _ in rows]
    pending = list(range(len(rows)))
    for attempt in range(1, cfg.max_retries + 2):
        if not pending:
            break
        answers = generate([current[i] for i in pending])
        failed = []
        for i, answer in zip(pending, answers):
            obj, error = validate_output(answer, task, cfg.require_all_regions)
            results[i].attempts = attempt
            if obj is not None:
                results[i] = EngineResult(obj["findings"], obj["impression"], "", attempt)
                continue
            failed.append(i)
            results[i].error = f"invalid output after {attempt} attempt(s): {error}; last answer {answer[:120]!r}"
            system, user = prompts[i]
            current[i] = (system, retry_prompt(cfg.prompt_version, user, answer, error))
        pending = failed
    return results
