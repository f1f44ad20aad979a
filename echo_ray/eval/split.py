"""The evaluation split's types: one study to decode and score, and the studies of one language.

Both loaders build them, the normalized-dataset reader (echo_ray.eval.dataset) and the JSON
test-set reader (echo_ray.eval.testset_json), so they sit below both.

Usage:
    study = EvalStudy("s1", "mimic_cxr", "en", "Findings: ... Impression: ...", ("a.png",))
    split = EvalSplit("data_out/normalized", "eval", "en", [study], 1, 1, {"en": 1})
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
