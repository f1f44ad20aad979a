"""Image dimensions from the file header alone (PNG IHDR, JPEG SOFn, DICOM Rows/Columns), no decode.

A 155 KB PNG can declare 6300 x 6300 pixels; knowing that before Pillow allocates the pixel buffer
(and before Pillow's own decompression-bomb check, which raises a generic error) lets a caller refuse
it with the right status. Specs: PNG (https://www.w3.org/TR/png/#11IHDR), JPEG (ITU T.81, B.1.1.3).

Usage:
    image_size(data)   # (width, height), or None when the header is unreadable
"""

from __future__ import annotations

import io
import struct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA or seg_len < 2:  # scan data before any frame header: malformed
            return None
        i += 2 + seg_len
    return None


def _dicom_size(data: bytes) -> tuple[int, int] | None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return int(ds.Columns), int(ds.Rows)


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) of a 'png' | 'jpeg' | 'dicom' image from its header; None when unreadable."""
    try:
        if kind == "png":
            return _png_size(data)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "dicom":
            return _dicom_size(data)
    except Exception:  # unreadable headers are reported as corrupt by the full decode
        return None
    return None
