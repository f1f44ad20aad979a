"""NLG metrics against hand-computed BLEU / ROUGE-L / CIDEr values."""

from __future__ import annotations

import math
import shutil

import pytest

from echo_ray.errors import InputError
from echo_ray.eval.linguistic import linguistic_scores, meteor_unavailable, tokenize


def test_tokenize_lowercases_splits_punctuation_and_cjk():
    assert tokenize("Heart size NORMAL, no effusion.") == ["heart", "size", "normal", ",", "no", "effusion", "."]
    assert tokenize("心影增大，CT 正常") == ["心", "影", "增", "大", "，", "ct", "正", "常"]


def test_identical_texts_score_one():
    texts = ["The heart size is normal. No pleural effusion.", "Small left pleural effusion."]
    s = linguistic_scores(texts, list(texts), meteor=False)
    for n in range(1, 5):
        assert s[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert s["rouge_l"] == pytest.approx(1.0)
    assert "meteor" not in s


def test_known_pair_matches_hand_computation():
    # pred "the heart is normal" vs ref "the heart is enlarged": clipped n-gram precisions
    # 3/4, 2/3, 1/2, 0/1; equal lengths so brevity penalty 1; LCS 3 of 4 tokens both ways.
    s = linguistic_scores(["the heart is normal"], ["the heart is enlarged"], meteor=False)
    assert s["bleu1"] == pytest.approx(0.75, abs=1e-6)
    assert s["bleu2"] == pytest.approx(math.sqrt(0.75 * 2 / 3), abs=1e-6)
    assert s["bleu3"] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3), abs=1e-6)
    assert s["bleu4"] < 1e-3  # no 4-gram match (pycocoevalcap smooths 0 to ~1e-15)
    assert s["rouge_l"] == pytest.approx(0.75)


def test_brevity_penalty_and_rouge_beta():
    # pred 3 tokens, ref 5: BP = exp(1 - 5/3); LCS = 3, P = 1, R = 0.6, beta = 1.2.
    s = linguistic_scores(["heart is normal"], ["the heart size is normal"], meteor=False)
    assert s["bleu1"] == pytest.approx(math.exp(1 - 5 / 3), abs=1e-6)
    beta2 = 1.2**2
    assert s["rouge_l"] == pytest.approx((1 + beta2) * 1.0 * 0.6 / (0.6 + beta2 * 1.0))


def test_cider_of_exact_matches_is_ten():
    # No n-gram is shared between the two documents, so every idf weight is log(2) and each
    # pair's cosine is 1 for n = 1..4: CIDEr = 10 * mean(1) = 10.
    refs = ["small left pleural effusion noted", "heart size within normal limits"]
    assert linguistic_scores(refs, list(refs), meteor=False)["cider"] == pytest.approx(10.0)
    worse = linguistic_scores(["small left pleural effusion", "heart size is large"], refs, meteor=False)
    assert 0 < worse["cider"] < 10


def test_empty_prediction_scores_low_without_crashing():
    s = linguistic_scores(["", "no effusion"], ["no pneumothorax", "no effusion"], meteor=False)
    assert 0 <= s["rouge_l"] < 1 and s["bleu1"] < 1


def test_chinese_per_character():
    s = linguistic_scores(["心影增大，双肺纹理清晰"], ["心影增大，双肺纹理清晰"], language="zh")
    assert s["bleu4"] == pytest.approx(1.0, abs=1e-6) and "meteor" not in s
    assert "English only" in meteor_unavailable("zh")


def test_bad_input_is_reported():
    with pytest.raises(InputError, match="pair up"):
        linguistic_scores(["a"], ["a", "b"], meteor=False)
    with pytest.raises(InputError, match="reference report is empty"):
        linguistic_scores(["a"], [" "], meteor=False)
    with pytest.raises(InputError, match="language"):
        linguistic_scores(["a"], ["a"], language="fr")


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java (not on PATH)")
def test_meteor_runs_with_java():
    s = linguistic_scores(["no pleural effusion", "the heart is enlarged"],
                          ["no pleural effusion", "heart size is normal"])
    assert 0.0 < s["meteor"] < 1.0
