"""Image reading: PNG/JPEG/DICOM decode, and one-line errors for bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from echo_ray.data.images import image_from_bytes, read_image
from echo_ray.errors import InputError


def test_real_nih_png_loads() -> None:
    img = read_image(shared_path("cxr_images_nih", "00000001_000.png"))
    assert img.mode == "RGB" and img.size == (512, 512)


def test_jpeg_and_dicom(tmp_path) -> None:
    buf = io.BytesIO()
    Image.new("L", (40, 30), 128).save(buf, format="JPEG")
    assert image_from_bytes(buf.getvalue(), "x.jpg").size == (40, 30)
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 4096)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 48, 64, 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME1"
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    img = read_image(tmp_path / "x.dcm")
    assert img.size == (64, 48) and img.mode == "RGB"
    assert pydicom.dcmread(tmp_path / "x.dcm").Rows == 48


def test_bad_inputs_name_the_file(tmp_path) -> None:
    with pytest.raises(InputError, match="not found: .*missing.png"):
        read_image(tmp_path / "missing.png")
    good = io.BytesIO()
    Image.new("L", (64, 64)).save(good, format="PNG")
    (tmp_path / "corrupt.png").write_bytes(good.getvalue()[:60])
    with pytest.raises(InputError, match="corrupt.png"):
        read_image(tmp_path / "corrupt.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image: .*notes.txt"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="over the limit"):
        image_from_bytes(good.getvalue(), "big.png", max_pixels=100)
