"""Stage 5 splits: no study, image or patient in two splits; eval balanced over sources; DCD proportional."""

from __future__ import annotations

from collections import Counter

from echo_ray.config import SplitConfig
from echo_ray.data.pipeline.bilingual import selected_for_translation
from echo_ray.data.pipeline.splits import Study, assign_splits, choose_dcd


def corpus() -> list[Study]:
    studies = []
    for src, n in (("mimic_cxr", 300), ("chexpert_plus", 120), ("rexgradient", 60), ("iu_xray", 200)):
        for i in range(n):
            patient = f"{src}:p{i // 3}"  # three studies per patient
            studies.append(Study(f"{src}:{i}", src, patient, [f"/img/{src}/{i}.png"], has_zh=i % 2 == 0))
    studies.append(Study("iu_xray:dup", "iu_xray", "", ["/img/iu_xray/7.png"]))  # shares an image with iu_xray:7
    return studies


def test_no_patient_or_image_in_two_splits():
    studies = corpus()
    split = assign_splits(studies, SplitConfig(eval_per_language=90, eval_fraction=0.5, seed=3,
                                                eval_sources=["mimic_cxr", "chexpert_plus", "rexgradient", "iu_xray"]))  # fmt: skip
    by_patient, by_image = {}, {}
    for s in studies:
        if s.patient_id:
            assert by_patient.setdefault(s.patient_id, split[s.uid]) == split[s.uid]
        for p in s.image_paths:
            assert by_image.setdefault(p, split[s.uid]) == split[s.uid]
    assert split["iu_xray:dup"] == split["iu_xray:7"]


def test_eval_balanced_over_paper_sources_and_bilingual():
    studies = corpus()
    split = assign_splits(studies, SplitConfig(eval_per_language=90, eval_fraction=1.0, seed=0))
    eval_studies = [s for s in studies if split[s.uid] == "eval"]
    per_source = Counter(s.source for s in eval_studies)
    assert set(per_source) == {"mimic_cxr", "chexpert_plus", "rexgradient"}  # paper's eval sources only
    assert all(27 <= n <= 30 for n in per_source.values()), per_source  # equal quotas (groups of 3)
    assert sum(per_source.values()) <= 90
    zh = sum(s.has_zh for s in eval_studies)
    assert zh >= 0.6 * len(eval_studies)  # eligible = studies with a Chinese copy (and their group)


def test_eval_falls_back_to_present_sources_and_fraction():
    studies = [Study(f"iu_xray:{i}", "iu_xray", f"iu_xray:{i}", [f"/i/{i}.png"]) for i in range(100)]
    split = assign_splits(studies, SplitConfig(eval_per_language=2000, eval_fraction=0.1))
    assert Counter(split.values()) == {"train": 90, "eval": 10}


def test_dcd_proportional_and_capped():
    rows = [(f"a:{i}", "en", "a") for i in range(600)] + [(f"b:{i}", "zh", "b") for i in range(200)]
    dcd = choose_dcd(rows, SplitConfig(dcd_rows=100))
    assert len(dcd) == 100
    assert Counter(uid.split(":")[0] for uid, _ in dcd) == {"a": 75, "b": 25}
    assert len(choose_dcd(rows[:10], SplitConfig(dcd_rows=100))) == 10  # smaller for small corpora
    assert choose_dcd(rows, SplitConfig(dcd_rows=100)) == dcd  # seeded


def test_bilingual_selection_is_seeded_half():
    picks = [selected_for_translation(f"u{i}", 0, 0.5) for i in range(4000)]
    assert 0.47 < sum(picks) / len(picks) < 0.53
    assert picks == [selected_for_translation(f"u{i}", 0, 0.5) for i in range(4000)]
    assert picks != [selected_for_translation(f"u{i}", 1, 0.5) for i in range(4000)]
