"""Read X-ray images (PNG, JPEG, DICOM) into RGB PIL images, with one-line errors for bad files.

DICOM is read with pydicom (MONOCHROME1 inverted, windowed to 8 bit). Everything else goes
through Pillow, which verifies the file before decoding it fully.

Usage:
    img = load_image("study/PA.png")        # PIL.Image.Image, mode RGB
    img = image_from_bytes(raw, name="upload.dcm")
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from echo_ray.errors import InputError

DICOM_MAGIC_OFFSET = 128


def is_dicom(data: bytes) -> bool:
    return len(data) > DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _dicom_to_image(data: bytes, name: str) -> Image.Image:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = ds.pixel_array.astype(np.float32)
    except Exception as e:
        raise InputError(f"corrupt DICOM image {name}: {e.__class__.__name__}") from None
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # multi-frame: first frame
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    return Image.fromarray((arr * 255).astype(np.uint8)).convert("RGB")


def image_from_bytes(data: bytes, name: str = "<upload>", max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes; raises InputError naming `name` when they are not a readable image."""
    if is_dicom(data):
        img = _dicom_to_image(data, name)
    else:
        try:
            probe = Image.open(io.BytesIO(data))
            probe.verify()  # cheap integrity check before the full decode
            img = Image.open(io.BytesIO(data))
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise InputError(f"image {name} has {img.width * img.height} pixels, over the limit of {max_pixels}")
            img.load()
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"not a readable image: {name} ({e.__class__.__name__})") from None
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise InputError(f"image {name} has {img.width * img.height} pixels, over the limit of {max_pixels}")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Read an image file from disk (PNG/JPEG/DICOM) as RGB."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file not found: {p}")
    return image_from_bytes(p.read_bytes(), name=str(p), max_pixels=max_pixels)
