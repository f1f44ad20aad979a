"""IU X-ray (Indiana University / OpenI) adapter, Kaggle "Chest X-rays (Indiana University)" layout.

Reference: Demner-Fushman et al., JAMIA 2016; layout as the widely mirrored Kaggle export (raddar):
    <path>/indiana_reports.csv      uid,MeSH,Problems,image,indication,comparison,findings,impression
    <path>/indiana_projections.csv  uid,filename,projection   (projection: Frontal | Lateral)
    <path>/images/images_normalized/<filename>   (images; optional here, see `require_images`)
One record per report row. `image` is the exam description ("Xray Chest PA and Lateral"), kept
as extras["exam"] for the modality filter; MeSH/Problems go to extras for the labeler benchmark.
De-identification blanks ("XXXX") are left as written; the standardizer maps them.

Usage:
    records = read_task(SourceSpec("iu_xray", "/data/iu_xray_kaggle"), "reports")
"""

from __future__ import annotations

from pathlib import Path

from echo_ray.config import SourceSpec
from echo_ray.data.schema import image, issue_record, new_record
from echo_ray.data.sources import join_image
from echo_ray.data.sources.tabular import read_csv_rows, source_root
from echo_ray.errors import InputError

NAME = "iu_xray"
REPORTS = "indiana_reports.csv"
PROJECTIONS = "indiana_projections.csv"
REPORT_COLUMNS = ("uid", "findings", "impression")


def _root(spec: SourceSpec) -> Path:
    root = source_root(spec.path, NAME)
    for name in (REPORTS, PROJECTIONS):
        if not (root / name).is_file():
            raise InputError(f"{NAME}: {root} is not an IU X-ray export (missing {name})")
    return root


def image_root(spec: SourceSpec) -> str:
    if spec.images:
        return spec.images
    root = Path(spec.path).expanduser()
    for cand in (root / "images" / "images_normalized", root / "images_normalized", root / "images"):
        if cand.is_dir():
            return str(cand)
    return str(root / "images" / "images_normalized")


def list_tasks(spec: SourceSpec) -> list[str]:
    _root(spec)
    return ["reports"]  # one CSV: rows span lines (quoted newlines), so it is read by one task


def _projections(root: Path, images: str) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """uid -> images, and uid -> problem for studies with a malformed projection row."""
    out: dict[str, list[dict[str, str]]] = {}
    bad: dict[str, str] = {}
    for row in read_csv_rows(root / PROJECTIONS, required=("uid", "filename", "projection")):
        uid, fname = row.values.get("uid", "").strip(), row.values.get("filename", "").strip()
        if row.issue:  # the study would silently lose a view: quarantine it instead
            bad.setdefault(uid, f"{PROJECTIONS}: {row.detail}")
        elif uid and fname:
            out.setdefault(uid, []).append(image(join_image(images, fname), row.values["projection"]))
    return out, bad


def read_task(spec: SourceSpec, task: str) -> list[dict]:
    root = _root(spec)
    projections, bad_projections = _projections(root, image_root(spec))
    records, seen = [], set()
    for row in read_csv_rows(root / REPORTS, required=REPORT_COLUMNS):
        v = row.values
        sid = (v.get("uid") or "").strip() or f"line{row.line}"
        raw = ", ".join(f"{k}={v[k]}" for k in ("findings", "impression") if k in v)
        if row.issue or sid in bad_projections:
            issue, detail = (row.issue, row.detail) if row.issue else ("malformed_row", bad_projections[sid])
            records.append(issue_record(NAME, sid, issue, detail, raw_text=raw))
            continue
        if sid in seen:
            records.append(issue_record(NAME, f"{sid}@line{row.line}", "duplicate_study_id",
                                        f"{REPORTS} line {row.line}: uid {sid} appears twice", raw_text=raw))
            continue
        seen.add(sid)
        extras = {"exam": v.get("image", ""), "comparison": v.get("comparison", ""),
                  "mesh": v.get("MeSH", ""), "problems": v.get("Problems", ""),
                  "patient_id": f"{NAME}:{sid}"}  # fmt: skip
        records.append(
            new_record(
                NAME, sid,
                images=projections.get(sid, []),
                raw_findings=v.get("findings", "").strip(),
                raw_impression=v.get("impression", "").strip(),
                indication=v.get("indication", "").strip(),
                raw_text="\n".join(f"{k.upper()}: {v.get(k, '')}" for k in ("indication", "findings", "impression")),
                extras=extras,
            )  # fmt: skip
        )
    return records
