"""Benchmark: echo_ray's rule labeler against IU X-ray's manual MeSH tags.

Data: ../shared/data/iu_xray_kaggle/indiana_reports.csv (Open-i IU X-ray, Demner-Fushman et al.,
JAMIA 2016). Each report's `MeSH` column holds ';'-separated manual tags "Term/qualifier/...".
We label "findings + impression" with `label_report` and score the positive class per observation
(uncertain counts as positive, as in echo_ray.eval.clinical), against gold labels from MESH_MAP.

MeSH -> CheXpert observation mapping (a tag maps when its head term matches and, where given, one
of its qualifiers contains the listed word; chosen from the CheXpert observation definitions, not
from the labeler's output):
    normal                                   -> No Finding
    Cardiomegaly; Cardiac Shadow/enlarged    -> Cardiomegaly
    Mediastinum/prominent|enlarged|widened   -> Enlarged Cardiomediastinum
    Opacity; Infiltrate; Airspace Disease; Density; Cicatrix/lung (scar);
      Markings/interstitial; Lung Diseases, Interstitial              -> Lung Opacity
    Nodule; Mass                             -> Lung Lesion
    Pulmonary Edema; Pulmonary Congestion; Heart Failure               -> Edema
    Consolidation -> Consolidation;  Pneumonia -> Pneumonia
    Pulmonary Atelectasis                    -> Atelectasis
    Pneumothorax; Hydropneumothorax; Hemopneumothorax                  -> Pneumothorax
    Pleural Effusion                         -> Pleural Effusion
    Thickening/pleura; Pleura; Cicatrix/pleura                         -> Pleural Other
    Fractures, Bone                          -> Fracture
    Catheters, Indwelling; Implanted Medical Device; Tube, Inserted;
      Surgical Instruments; Medical Device; Stents                     -> Support Devices
Extra keys: `uncertain_as_negative` (micro/macro F1 when hedged mentions count as absent, closer
to how IU annotators tagged) and `no_finding_vs_chexpert_definition` (No Finding scored against "no
mapped observation other than Support Devices" instead of MeSH "normal").
Reports tagged "No Indexing" (not annotated) and reports with empty findings and impression are
left out and counted in `excluded`.

Usage:
    python benchmarks/labeler.py --json [--csv PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echo_ray.eval.clinical import finding_prf  # noqa: E402
from echo_ray.clinical.labeler import label_report  # noqa: E402

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_kaggle" / "indiana_reports.csv"

# head term -> (observation, qualifier word required or None)
MESH_MAP: dict[str, list[tuple[str, str | None]]] = {
    "normal": [("No Finding", None)],
    "Cardiomegaly": [("Cardiomegaly", None)],
    "Cardiac Shadow": [("Cardiomegaly", "enlarged")],
    "Mediastinum": [("Enlarged Cardiomediastinum", "prominent"), ("Enlarged Cardiomediastinum", "enlarged"),
                    ("Enlarged Cardiomediastinum", "widened")],
    "Opacity": [("Lung Opacity", None)],
    "Infiltrate": [("Lung Opacity", None)],
    "Airspace Disease": [("Lung Opacity", None)],
    "Density": [("Lung Opacity", None)],
    "Cicatrix": [("Lung Opacity", "lung"), ("Pleural Other", "pleura")],
    "Markings": [("Lung Opacity", "interstitial")],
    "Lung Diseases, Interstitial": [("Lung Opacity", None)],
    "Nodule": [("Lung Lesion", None)],
    "Mass": [("Lung Lesion", None)],
    "Pulmonary Edema": [("Edema", None)],
    "Pulmonary Congestion": [("Edema", None)],
    "Heart Failure": [("Edema", None)],
    "Consolidation": [("Consolidation", None)],
    "Pneumonia": [("Pneumonia", None)],
    "Pulmonary Atelectasis": [("Atelectasis", None)],
    "Pneumothorax": [("Pneumothorax", None)],
    "Hydropneumothorax": [("Pneumothorax", None)],
    "Hemopneumothorax": [("Pneumothorax", None)],
    "Pleural Effusion": [("Pleural Effusion", None)],
    "Thickening": [("Pleural Other", "pleura")],
    "Pleura": [("Pleural Other", None)],
    "Fractures, Bone": [("Fracture", None)],
    "Catheters, Indwelling": [("Support Devices", None)],
    "Implanted Medical Device": [("Support Devices", None)],
    "Tube, Inserted": [("Support Devices", None)],
    "Surgical Instruments": [("Support Devices", None)],
    "Medical Device": [("Support Devices", None)],
    "Stents": [("Support Devices", None)],
}


def mesh_labels(mesh: str) -> set[str]:
    """Observations whose MeSH tags appear in one report's `MeSH` field."""
    out: set[str] = set()
    for tag in mesh.split(";"):
        parts = [p.strip() for p in tag.split("/")]
        for obs, qualifier in MESH_MAP.get(parts[0], []):
            if qualifier is None or any(qualifier in q.lower() for q in parts[1:]):
                out.add(obs)
    return out


def load_rows(path: Path, limit: int) -> tuple[list[tuple[str, set[str]]], dict[str, int]]:
    """(report text, gold observations) pairs plus counts of excluded rows by reason."""
    rows: list[tuple[str, set[str]]] = []
    excluded = {"no_indexing": 0, "empty_text": 0}
    with path.open(newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            text = " ".join(t for t in (rec["findings"], rec["impression"]) if t and t.strip())
            if "No Indexing" in rec["MeSH"]:
                excluded["no_indexing"] += 1
            elif not text.strip():
                excluded["empty_text"] += 1
            else:
                rows.append((text, mesh_labels(rec["MeSH"])))
            if limit and len(rows) >= limit:
                break
    return rows, excluded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N usable reports")
    ap.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = ap.parse_args()
    if not args.csv.is_file():
        print(json.dumps({"skipped": f"IU X-ray reports not found at {args.csv} (is ../shared present?)"}))
        return 0
    rows, excluded = load_rows(args.csv, args.limit)
    t0 = time.perf_counter()
    labels = [label_report(text) for text, _ in rows]
    elapsed = time.perf_counter() - t0
    gold = [g for _, g in rows]
    result = finding_prf([{o for o, s in lab.items() if s != 0} for lab in labels], gold)
    # IU annotators tag asserted findings only, so also score with uncertain counted as negative.
    strict = finding_prf([{o for o, s in lab.items() if s == 1} for lab in labels], gold)
    # MeSH "normal" also excludes findings outside the 14 observations (granulomas, spine changes);
    # CheXpert's No Finding only means none of the other 12 pathologies, so score that reading too.
    chexpert_gold = [g if g else {"No Finding"} for g in (g - {"No Finding", "Support Devices"} for g in gold)]
    nf = finding_prf([{o for o, s in lab.items() if s != 0} & {"No Finding"} for lab in labels],
                     [g & {"No Finding"} for g in chexpert_gold])["per_finding"]["No Finding"]
    result.update(
        n_reports=len(rows),
        excluded=excluded,
        reports_per_s=round(len(rows) / elapsed, 1),
        uncertain_as_negative={"micro_f1": strict["micro_f1"], "macro_f1": strict["macro_f1"]},
        no_finding_vs_chexpert_definition=nf,
    )
    if not args.json:
        for obs, d in result["per_finding"].items():
            print(f"{obs:28s} P={d['precision']:.3f} R={d['recall']:.3f} F1={d['f1']:.3f} n={d['support']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
