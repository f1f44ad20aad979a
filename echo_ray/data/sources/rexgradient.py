"""ReXGradient-160K adapter: the metadata files with Findings/Impression and image paths.

Reference: Zhang et al., "ReXGradient-160K" (2025), Hugging Face rajpurkarlab/ReXGradient-160K.
Assumed layout (fields as in the released metadata; where a release differs, these are the
names read):
    <path>/metadata/{train,valid,test}_metadata.{csv,json}   (or *metadata*.{csv,json,jsonl} in <path>)
    fields: id (study; else StudyInstanceUid / AccessionNumber), PatientID, ImagePath,
            ImageViewPosition, Indication, Comparison, Findings, Impression, and optionally
            StudyDescription / BodyPartExamined (kept as extras["exam"])
    ImagePath / ImageViewPosition hold a list per study (JSON or Python-literal list text in CSV,
    a real list in JSON); per-image rows repeating the study id are grouped as well.
    images: <path>/<ImagePath> (e.g. deid_png/...png) or under SourceSpec.images.
A JSON file is a list of study objects, an {id: object} mapping, or JSON lines. One task per file.

Usage:
    tasks = list_tasks(SourceSpec("rexgradient", "/data/ReXGradient-160K"))  # ["metadata/train_metadata.csv", ...]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from echo_ray.config import SourceSpec
from echo_ray.data.schema import image, issue_record, new_record
from echo_ray.data.sources import join_image
from echo_ray.data.sources.tabular import decode_text, parse_list, read_bytes, read_csv_rows, source_root
from echo_ray.errors import InputError

NAME = "rexgradient"
_ID_KEYS = ("id", "StudyInstanceUid", "AccessionNumber")


def list_tasks(spec: SourceSpec) -> list[str]:
    root = source_root(spec.path, NAME)
    found = []
    for d in (root / "metadata", root):
        for pattern in ("*metadata*.csv", "*metadata*.json", "*metadata*.jsonl"):
            found.extend(p.relative_to(root).as_posix() for p in d.glob(pattern) if p.is_file())
    if not found:
        raise InputError(f"{NAME}: no *metadata*.csv/json under {root} or {root / 'metadata'}")
    return sorted(set(found))


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(position, object or None, problem) for every study object in a JSON / JSON-lines file."""
    text, problem = decode_text(read_bytes(path))
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        data = json.loads(text)
        items = list(data.items()) if isinstance(data, dict) else list(enumerate(data))
        for i, (key, obj) in enumerate(items):
            if isinstance(obj, dict):
                yield i + 1, ({"id": key, **obj} if isinstance(data, dict) and "id" not in obj else obj), ""
            else:
                yield i + 1, None, f"{path.name} item {i + 1}: not an object"
        return
    except json.JSONDecodeError:
        pass  # JSON lines
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            yield (n, obj, "") if isinstance(obj, dict) else (n, None, f"{path.name} line {n}: not an object")
        except json.JSONDecodeError as e:
            yield n, None, f"{path.name} line {n}: invalid JSON ({e.msg})"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str, str]]:
    """(position, row, issue, detail) for CSV or JSON metadata."""
    if path.suffix in (".json", ".jsonl"):
        for n, obj, problem in _json_rows(path):
            yield n, obj, "malformed_row" if problem else "", problem
    else:
        for row in read_csv_rows(path, required=("Findings", "Impression", "ImagePath")):
            yield row.line, row.values, row.issue, row.detail


def _study_id(row: dict[str, Any]) -> str:
    for k in _ID_KEYS:
        if str(row.get(k) or "").strip():
            return str(row[k]).strip()
    return ""


def _text(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    return "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()


def read_task(spec: SourceSpec, task: str) -> list[dict]:
    root = Path(spec.path).expanduser()
    images_root = spec.images or str(root)
    studies: dict[str, dict[str, Any]] = {}
    records = []
    for n, row, issue, detail in _rows(root / task):
        sid = _study_id(row or {})
        if issue or not sid:
            records.append(issue_record(NAME, f"{sid or Path(task).stem}@{n}", issue or "malformed_row",
                                        detail or f"{task} row {n}: no study id ({'/'.join(_ID_KEYS)})"))  # fmt: skip
            continue
        paths, views = parse_list(row.get("ImagePath")), parse_list(row.get("ImageViewPosition"))
        ims = [image(join_image(images_root, p), views[i] if i < len(views) else "") for i, p in enumerate(paths)]
        if sid in studies:  # per-image rows of one study
            studies[sid]["images"].extend(ims)
            continue
        exam = " ".join(_text(row, k) for k in ("StudyDescription", "BodyPartExamined") if _text(row, k))
        extras = {"patient_id": f"{NAME}:{_text(row, 'PatientID') or sid}", "exam": exam,
                  "comparison": _text(row, "Comparison"), "split": Path(task).stem.split("_")[0]}  # fmt: skip
        studies[sid] = new_record(
            NAME, sid, images=ims, raw_findings=_text(row, "Findings"), raw_impression=_text(row, "Impression"),
            indication=_text(row, "Indication"),
            raw_text=f"INDICATION: {_text(row, 'Indication')}\nFINDINGS: {_text(row, 'Findings')}\n"
                     f"IMPRESSION: {_text(row, 'Impression')}",
            extras=extras,
        )  # fmt: skip
    records.extend(studies.values())
    return records
