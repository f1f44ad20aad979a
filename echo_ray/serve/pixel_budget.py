"""Per-replica budget of image pixels being decoded at once, and returning freed memory to the OS.

Small compressed files can declare huge images (a 155 KB PNG of 6300 x 6300); each request's
images are checked against per-image and per-request limits from their headers (`inputs.py`),
and this budget bounds how many such pixels one replica decodes concurrently: a request whose
images would exceed it waits until others finish. After a large decode, glibc keeps freed heap
pages; `trim_heap` hands them back so a burst does not leave the replica gigabytes larger.

Usage:
    budget = PixelBudget(200_000_000)
    async with budget.hold(total_pixels):
        req = await asyncio.to_thread(decode_images, parsed, limits)
    trim_heap()
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from contextlib import asynccontextmanager
from typing import AsyncIterator

_libc = None


class PixelBudget:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"pixel budget must be >= 1, got {capacity}")
        self.capacity, self.in_use = capacity, 0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Wait until `pixels` (at most the whole budget) fit, hold them for the block."""
        n = min(pixels, self.capacity)
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use + n <= self.capacity)
            self.in_use += n
        try:
            yield
        finally:
            async with self._cond:
                self.in_use -= n
                self._cond.notify_all()


def trim_heap() -> bool:
    """glibc `malloc_trim(0)`: return free heap pages to the OS; False where there is no glibc."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if not _libc or not hasattr(_libc, "malloc_trim"):
        return False
    return bool(_libc.malloc_trim(0))
