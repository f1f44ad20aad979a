"""The unified pyarrow record schemas of the normalization pipeline (issue 4).

Three tables flow through `echo_ray.data.pipeline`:
  * RECORD_SCHEMA: what every source adapter yields, one row per input study: ids, images with
    view, raw findings/impression/indication/text, source-specific extras (map<string,string>),
    and `issue`/`issue_detail` for records the adapter could not read cleanly (quarantined later,
    never dropped).
  * OUTPUT_SCHEMA: the rows the training stages read from `<output>/<split>/*.parquet`.
  * REJECT_SCHEMA: every filtered, quarantined or deduplicated record, with its reason.

Usage:
    rec = new_record("iu_xray", "1", images=[image("/d/1.png", "Frontal")], raw_findings="...")
    table = to_table([rec], RECORD_SCHEMA)
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

IMAGE_TYPE = pa.struct([("path", pa.string()), ("view", pa.string())])
EXTRAS_TYPE = pa.map_(pa.string(), pa.string())
LABELS_TYPE = pa.map_(pa.string(), pa.int32())

RECORD_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),  # "<source>:<study_id>", unique over the whole corpus
        ("study_id", pa.string()),
        ("source", pa.string()),
        ("images", pa.list_(IMAGE_TYPE)),
        ("raw_findings", pa.string()),
        ("raw_impression", pa.string()),
        ("indication", pa.string()),
        ("raw_text", pa.string()),
        ("extras", EXTRAS_TYPE),  # exam, patient_id, split, mesh, ... (per adapter docstring)
        ("issue", pa.string()),  # "" or a reason key (malformed_row, not_utf8, unreadable_file, ...)
        ("issue_detail", pa.string()),
    ]
)

# Records that survive prepare, with their shard; standardization adds the engine's output.
STANDARDIZED_FIELDS = [
    ("shard", pa.string()),
    ("status", pa.string()),  # kept | quarantined
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("findings", pa.string()),
    ("impression", pa.string()),
    ("attempts", pa.int32()),
    ("labels", LABELS_TYPE),
]

OUTPUT_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("study_id", pa.string()),
        ("source", pa.string()),
        ("language", pa.string()),  # en | zh
        ("findings", pa.string()),
        ("impression", pa.string()),
        ("report", pa.string()),  # echo_ray.report.format_report(findings, impression, language)
        ("raw_findings", pa.string()),
        ("raw_impression", pa.string()),
        ("indication", pa.string()),
        ("images", pa.list_(IMAGE_TYPE)),
        ("labels", LABELS_TYPE),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("study_id", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),  # filtered | quarantined | deduplicated | translation_failed
        ("stage", pa.string()),  # prepare | standardize | dedup | translate
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),  # uid of the kept twin (dedup only)
        ("raw_findings", pa.string()),
        ("raw_impression", pa.string()),
    ]
)

_VIEWS = {
    "pa": "PA", "postero_anterior": "PA", "posteroanterior": "PA",
    "ap": "AP", "antero_posterior": "AP", "anteroposterior": "AP", "ap axial": "AP",
    "lateral": "LATERAL", "lat": "LATERAL", "ll": "LATERAL", "rl": "LATERAL", "left lateral": "LATERAL",
    "frontal": "FRONTAL",
}  # fmt: skip


def normalize_view(view: Any) -> str:
    """Map a source's view label to PA / AP / LATERAL / FRONTAL, else the upper-cased original."""
    v = str(view or "").strip()
    return _VIEWS.get(v.lower(), v.upper() or "UNKNOWN")


def image(path: str, view: Any) -> dict[str, str]:
    return {"path": str(path), "view": normalize_view(view)}


def make_uid(source: str, study_id: str) -> str:
    return f"{source}:{study_id}"


def new_record(source: str, study_id: str, **fields: Any) -> dict[str, Any]:
    """A RECORD_SCHEMA row with defaults; unknown field names are a bug and raise KeyError."""
    rec: dict[str, Any] = {
        "uid": make_uid(source, study_id),
        "study_id": str(study_id),
        "source": source,
        "images": [],
        "raw_findings": "",
        "raw_impression": "",
        "indication": "",
        "raw_text": "",
        "extras": {},
        "issue": "",
        "issue_detail": "",
    }
    for k, v in fields.items():
        if k not in rec:
            raise KeyError(f"unknown record field {k!r}")
        rec[k] = v
    return rec


def issue_record(source: str, study_id: str, reason: str, detail: str, **fields: Any) -> dict[str, Any]:
    """A record the adapter could not read cleanly; the pipeline quarantines it with `reason`."""
    return new_record(source, study_id, issue=reason, issue_detail=detail, **fields)


def _to_arrow_value(field: pa.Field, value: Any) -> Any:
    if pa.types.is_map(field.type) and isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if pa.types.is_string(field.type) and value is not None and not isinstance(value, str):
        return str(value)
    return value


def to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; map columns may be dicts) -> a table with exactly `schema`'s columns."""
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    for row in rows:
        for f in schema:
            cols[f.name].append(_to_arrow_value(f, row.get(f.name)))
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)


def map_to_dict(value: Any) -> dict[str, Any]:
    """A map cell as returned by `to_pylist()` (list of pairs, dict or None) -> dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return {k: v for k, v in value}
