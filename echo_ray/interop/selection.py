"""Which instances of a PACS study the report is made from (pure functions over DICOM JSON metadata).

A study qualifies when it has CR/DX images of the chest (BodyPartExamined CHEST, or absent) and at
least one frontal view (ViewPosition PA or AP). Frontal views come first, then laterals (LL, RL,
LATERAL), at most `max_images`; other views are not used. A study that does not qualify gets a
reason naming what is missing (views and body parts only: no patient data).

Usage:
    chosen, reason = select_images(pacs.study_metadata(uid), max_images=4)   # reason None when usable
"""

from __future__ import annotations

from dataclasses import dataclass

from echo_ray.interop.dicomweb import tag_value

FRONTAL = ("PA", "AP")
LATERAL = ("LL", "RL", "LATERAL", "LAT")
CHEST = ("CHEST",)


@dataclass(frozen=True)
class ChosenImage:
    series_uid: str
    sop_uid: str
    view: str


def select_images(meta: list[dict], modalities: tuple[str, ...] = ("CR", "DX"),
                  max_images: int = 4) -> tuple[list[ChosenImage], str | None]:  # fmt: skip
    """The instances to report on, frontal first; ([], reason) when the study is not a usable chest study."""
    images = [m for m in meta if tag_value(m, "modality").upper() in modalities]
    if not images:
        return [], f"no {'/'.join(modalities)} images in the study"
    parts = {tag_value(m, "body_part").upper() for m in images} - {""}
    if parts and not parts & set(CHEST):
        return [], f"body part {', '.join(sorted(parts))} is not chest"
    chest = [m for m in images if tag_value(m, "body_part").upper() in ("", *CHEST)]
    by_view = {v: [m for m in chest if tag_value(m, "view").upper() == v] for v in (*FRONTAL, *LATERAL)}
    frontal = [m for v in FRONTAL for m in by_view[v]]
    if not frontal:
        views = sorted({tag_value(m, "view").upper() or "(none)" for m in chest})
        return [], f"no frontal (PA/AP) view; views present: {', '.join(views)}"
    lateral = [m for v in LATERAL for m in by_view[v]]
    chosen = (frontal + lateral)[:max_images]
    return [ChosenImage(tag_value(m, "series"), tag_value(m, "sop"), tag_value(m, "view").upper()) for m in chosen], None
