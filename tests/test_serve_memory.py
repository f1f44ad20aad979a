"""Bounded image memory (issue 12): 4 PNGs of 6300 x 6300 (a few KB each) through the request decoder.

Before: the full-size RGB image (119 MB each) was built and kept for the processor, and a replica grew
by about 1.3 GB per such request. Now each image is decoded single-channel, reduced to about the
processor's size before the RGB conversion, and dropped, one at a time: the peak RSS increase must stay
under PEAK_BOUND and the process must be back within AFTER_BOUND of its starting RSS afterwards.
"""

from __future__ import annotations

import gc
import io
import threading
import time

import psutil
from PIL import Image

from echo_ray.serve.inputs import Limits, ParsedBody, Upload, decode_images
from echo_ray.serve.pixel_budget import trim_heap
from echo_ray.serve.schemas import ReportFields

SIDE = 6300
PEAK_BOUND = 200e6  # one 40 MB single-channel decode at a time, plus Pillow/zlib working buffers
AFTER_BOUND = 40e6


def test_four_6300_squared_pngs_decode_under_a_bounded_rss():
    buf = io.BytesIO()
    Image.new("L", (SIDE, SIDE), 40).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 200_000
    limits = Limits(30_000_000, 4, 40_000_000, 64, 200_000_000, target_pixels=2 * 1_000_000)
    proc = psutil.Process()
    gc.collect()
    trim_heap()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        req = decode_images(ParsedBody([Upload(data, "image/png", "") for _ in range(4)], ReportFields(), 4 * len(data)), limits)
        sizes = [im.size for im in req.images]
        del req
        gc.collect()
        trim_heap()
        time.sleep(0.05)
    finally:
        done.set()
        sampler.join()
    after = proc.memory_info().rss - base
    print(f"\n4 x {SIDE}^2 PNG: peak RSS +{(peak[0] - base) / 1e6:.0f} MB, after +{after / 1e6:.0f} MB, decoded to {sizes[0]}")
    # Integer box reduction to at least the target: between 1x and 4x the target pixels, never the full size.
    assert all(2_000_000 <= w * h < 4 * 2_000_000 and w == h for w, h in sizes)
    assert peak[0] - base < PEAK_BOUND
    assert after < AFTER_BOUND
