"""StudyPrompt's pickling: numpy buffers across processes, the same writable tensors back."""

from __future__ import annotations

import pickle

import torch

from echo_ray.model.prompt import StudyPrompt


def _fields(p: StudyPrompt) -> tuple[torch.Tensor, ...]:
    return p.input_ids, p.pixel_values, p.image_grid_thw


def test_prompt_pickles_as_out_of_band_buffers_and_comes_back_as_the_same_writable_tensors() -> None:
    p = StudyPrompt(torch.arange(7), torch.randn(16, 12), torch.tensor([[1, 4, 4]]))
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(p, protocol=5, buffer_callback=buffers.append)  # what Ray's serializer does
    assert len(buffers) == 3 and len(data) < 1000, "the tensors' bytes travel out of band, not in the pickle"
    readonly = [memoryview(bytes(b.raw())) for b in buffers]  # a zero-copy reader hands back read-only memory
    q = pickle.loads(data, buffers=readonly)
    for a, b in zip(_fields(p), _fields(q)):
        assert isinstance(b, torch.Tensor) and b.dtype == a.dtype and torch.equal(a, b)
        b.add_(0)  # writable: a copy, not a view of the read-only buffer


def test_bfloat16_pixels_keep_torch_pickling() -> None:
    p = StudyPrompt(torch.arange(3), torch.randn(4, 6).bfloat16(), torch.tensor([[1, 2, 2]]))
    q = pickle.loads(pickle.dumps(p, protocol=5))
    assert q.pixel_values.dtype == torch.bfloat16 and torch.equal(q.pixel_values, p.pixel_values)
    assert torch.equal(q.input_ids, p.input_ids)
