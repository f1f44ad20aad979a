"""Read X-ray images (PNG, JPEG, DICOM) into RGB PIL images, with one-line errors for bad files.

DICOM is read with pydicom (MONOCHROME1 inverted, windowed to 8 bit). Everything else goes
through Pillow, which verifies the file before decoding it fully.

Usage:
    img = read_image("study/PA.png")        # PIL.Image.Image, mode RGB (also s3://bucket/PA.png)
    img = image_from_bytes(raw, name="upload.dcm")
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from echo_ray.errors import InputError
from echo_ray.storage import is_s3, read_bytes

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


def _shrink(img: Image.Image, target_pixels: int | None) -> Image.Image:
    """Reduce `img` by an integer factor (box filter) until it has at most ~`target_pixels` pixels."""
    if not target_pixels or img.width * img.height <= target_pixels:
        return img
    factor = int((img.width * img.height / target_pixels) ** 0.5)
    if factor < 2:
        return img
    try:
        return img.reduce(factor)
    except ValueError:  # modes reduce() does not take (palette, bilevel)
        return img.convert("L" if img.mode == "1" else "RGB").reduce(factor)


def _pillow_decode(data: bytes, name: str, max_pixels: int | None, target_pixels: int | None) -> Image.Image:
    probe = Image.open(io.BytesIO(data))
    probe.verify()  # cheap integrity check before the full decode
    img = Image.open(io.BytesIO(data))
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise InputError(f"image {name} has {img.width * img.height} pixels, over the limit of {max_pixels}")
    if target_pixels and img.format == "JPEG":
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: never allocate the full-size buffer.
        scale = (img.width * img.height / target_pixels) ** 0.5
        if scale >= 2:
            img.draft(img.mode, (int(img.width / scale), int(img.height / scale)))
    img.load()
    return _shrink(img, target_pixels)  # before convert("RGB"): the full-size RGB copy never exists


def image_from_bytes(data: bytes, name: str = "<upload>", max_pixels: int | None = None,
                     target_pixels: int | None = None) -> Image.Image:  # fmt: skip
    """Decode image bytes; raises InputError naming `name` when they are not a readable image.

    `target_pixels` (the model processor's size, or more): larger images are reduced right after
    decoding (JPEG: while decoding), so only one full-size single-channel buffer lives at a time.
    """
    if is_dicom(data):
        img = _shrink(_dicom_to_image(data, name), target_pixels)
    else:
        try:
            img = _pillow_decode(data, name, max_pixels, target_pixels)
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"not a readable image: {name} ({e.__class__.__name__})") from None
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise InputError(f"image {name} has {img.width * img.height} pixels, over the limit of {max_pixels}")
    return img.convert("RGB")


def read_image(uri: str | Path, max_pixels: int | None = None) -> Image.Image:
    """A local or s3:// image (PNG/JPEG/DICOM) as RGB; InputError naming it otherwise.

    The one image reader of training, evaluation and file inputs: bytes come from echo_ray.storage.
    """
    if not is_s3(uri) and not Path(uri).expanduser().is_file():
        raise InputError(f"image file not found: {uri}")
    return image_from_bytes(read_bytes(str(uri), "image"), name=str(uri), max_pixels=max_pixels)


