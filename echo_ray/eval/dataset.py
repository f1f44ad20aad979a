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
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image

from echo_ray.data.pipeline.store import OutputStore
from echo_ray.errors import InputError
from echo_ray.eval.testset_json import is_json_testset, load_json_testset
from echo_ray.report import parse_report
from echo_ray.storage import is_s3, split_s3

COLUMNS = ("study_id", "source", "language", "report", "images")
SPLITS = ("train", "eval", "dcd")
_SHOW = 3  # ids named in an error message


@dataclass(frozen=True)
class EvalStudy:
    study_id: str
    source: str
    language: str
    reference: str  # the serialized report ("Findings: ... Impression: ...")
    image_paths: tuple[str, ...]


@dataclass
class EvalSplit:
    data: str
    split: str
    language: str
    studies: list[EvalStudy]
    rows_in_split: int  # all languages
    rows_in_language: int  # before the max_reports cap
    languages: dict[str, int] = field(default_factory=dict)  # rows per language in the split

    @property
    def references(self) -> list[str]:
        return [s.reference for s in self.studies]


def _named(ids: list[str]) -> str:
    shown = ", ".join(ids[:_SHOW])
    return shown + (f" and {len(ids) - _SHOW} more" if len(ids) > _SHOW else "")


def _split_files(store: OutputStore, data: str, split: str) -> list[str]:
    if store.local and not os.path.isdir(store.base):
        raise InputError(f"dataset not found: {data}")
    files = store.listdir(split, ".parquet")
    if not files:
        present = [s for s in SPLITS if store.listdir(s, ".parquet")]
        raise InputError(
            f"split '{split}' not found in {data}: no {split}/*.parquet "
            f"(splits present: {', '.join(present) or 'none; is this a normalized dataset?'})"
        )
    return files


def _read_rows(store: OutputStore, files: list[str], data: str) -> list[dict]:
    rows: list[dict] = []
    for rel in files:
        try:
            table = store.read_table(rel)
        except OSError as e:
            raise InputError(f"cannot read {store.display(rel)}: {str(e).splitlines()[0]}") from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise InputError(f"{store.display(rel)} lacks column(s) {', '.join(missing)}; not a normalized split")
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
    store = OutputStore(data)
    rows = _read_rows(store, _split_files(store, data, split), data)
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


@lru_cache(maxsize=8)
def _bucket_store(bucket: str) -> OutputStore:
    return OutputStore(f"s3://{bucket}")  # one S3 filesystem (credentials, endpoint) per bucket


def _read_s3_bytes(uri: str) -> bytes:
    bucket, key = split_s3(uri)
    store = _bucket_store(bucket)
    try:
        with store.fs.open_input_stream(f"{bucket}/{key}") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read image {uri}: {str(e).splitlines()[0]}") from None


def load_study_images(study: EvalStudy, max_images: int | None = None) -> list[Image.Image]:
    """The study's images as RGB PIL images (local files or s3:// objects), first `max_images`."""
    from echo_ray.data.images import image_from_bytes, load_image

    paths = study.image_paths[:max_images] if max_images else study.image_paths
    return [image_from_bytes(_read_s3_bytes(p), name=p) if is_s3(p) else load_image(p) for p in paths]
