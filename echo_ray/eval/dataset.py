"""Read one language of a normalized split for evaluation, checking it before any decoding.

The normalized dataset (echo_ray.data.pipeline, OUTPUT_SCHEMA) is `<data>/manifest.json` plus
`<data>/<split>/*.parquet`; `<data>` is a local directory or s3:// prefix. Rows are taken in file
order (part files sorted by name), filtered to one language and capped at `max_reports`, so a
rerun evaluates the same studies. Every problem that would waste a decoding run is an InputError
here: missing dataset or split, an empty split, a language the split lacks, missing columns,
empty references (report text with neither section), studies without images, and local image
files that do not exist. Images are read lazily, per batch (`load_study_images`), because a
full-resolution eval split does not fit in memory.

Usage:
    split = load_eval_split("data_out/normalized", "eval", "en", max_reports=200)
    split.studies[0].reference, split.studies[0].image_paths
    images = load_study_images(split.studies[0])
"""

from __future__ import annotations

import os

from PIL import Image

from echo_ray.data.images import read_image
from echo_ray.errors import InputError
from echo_ray.eval.split import EvalSplit, EvalStudy
from echo_ray.eval.testset_json import is_json_testset, load_json_testset
from echo_ray.report import parse_report
from echo_ray.storage import is_s3, join, list_files, read_parquet

COLUMNS = ("study_id", "source", "language", "report", "images")
SPLITS = ("train", "eval", "dcd")
_SHOW = 3  # ids named in an error message

__all__ = ["COLUMNS", "SPLITS", "load_eval_split", "load_study_images"]


def _named(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOW])
    return shown + (f" and {len(ids) - _SHOW} more" if len(ids) > _SHOW else "")


def _split_files(data: str, split: str) -> list[str]:
    if not is_s3(data) and not os.path.isdir(os.path.expanduser(data)):
        raise InputError(f"dataset not found: {data}")
    files = list_files(join(data, split), ".parquet")
    if not files:
        present = [s for s in SPLITS if list_files(join(data, s), ".parquet")]
        raise InputError(
            f"split '{split}' not found in {data}: no {split}/*.parquet "
            f"(splits present: {', '.join(present) or 'none; is this a normalized dataset?'})"
        )
    return files


def _read_rows(files: list[str]) -> list[dict]:
    rows: list[dict] = []
    for uri in files:
        table = read_parquet(uri)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise InputError(f"{uri} lacks column(s) {', '.join(missing)}; not a normalized split")
        rows.extend(table.select(list(COLUMNS)).to_pylist())
    return rows


def _check_references(rows: list[dict], where: str) -> None:
    """Every row must have a reference with at least one non-empty section, and images."""
    empty = [r["study_id"] for r in rows if not _has_text(r["report"])]
    if empty:
        raise InputError(f"{where}: {len(empty)} row(s) have an empty reference report (study {_named(empty)})")
    no_images = [r["study_id"] for r in rows if not r["images"]]
    if no_images:
        raise InputError(f"{where}: {len(no_images)} row(s) have no images (study {_named(no_images)})")


def _has_text(report: str | None) -> bool:
    if not report or not report.strip():
        return False
    parsed = parse_report(report)
    if parsed.has_findings or parsed.has_impression:
        return bool(parsed.findings.strip() or parsed.impression.strip())
    return True  # no section headers: free text still counts as a reference


def _check_images_exist(studies: list[EvalStudy], where: str) -> None:
    missing = [p for s in studies for p in s.image_paths if not is_s3(p) and not os.path.isfile(p)]
    if missing:
        raise InputError(f"{where}: {len(missing)} image file(s) not found ({_named(missing)})")


def load_eval_split(data: str, split: str, language: str, max_reports: int) -> EvalSplit:
    """The first `max_reports` rows of `language` in `<data>/<split>`, validated (module doc).

    `data` may also be a published test-set JSON file or folder (echo_ray.eval.testset_json).
    """
    if language not in ("en", "zh"):
        raise InputError(f"unknown language {language!r}; expected 'en' or 'zh'")
    if max_reports < 1:
        raise InputError(f"max_reports must be >= 1, got {max_reports}")
    if not data:
        raise InputError("no dataset given (set eval.data or pass --data)")
    if not is_s3(data) and is_json_testset(data):  # the published ECHO test-set JSON format
        return load_json_testset(data, language, max_reports)
    rows = _read_rows(_split_files(data, split))
    where = f"split '{split}' of {data}"
    if not rows:
        raise InputError(f"{where} is empty (0 rows)")
    languages: dict[str, int] = {}
    for r in rows:
        languages[r["language"]] = languages.get(r["language"], 0) + 1
    chosen = [r for r in rows if r["language"] == language]
    if not chosen:
        have = ", ".join(f"{k}: {v}" for k, v in sorted(languages.items()))
        raise InputError(f"{where} has no '{language}' rows (rows per language: {have})")
    _check_references(chosen, where)
    studies = [
        EvalStudy(str(r["study_id"]), str(r["source"] or ""), language, r["report"].strip(),
                  tuple(str(im["path"]) for im in r["images"]))
        for r in chosen[:max_reports]
    ]  # fmt: skip
    _check_images_exist(studies, where)
    return EvalSplit(data, split, language, studies, len(rows), len(chosen), languages)


def load_study_images(study: EvalStudy, max_images: int | None = None) -> list[Image.Image]:
    """The study's images as RGB PIL images (local files or s3:// objects), first `max_images`."""
    paths = study.image_paths[:max_images] if max_images else study.image_paths
    return [read_image(p) for p in paths]
