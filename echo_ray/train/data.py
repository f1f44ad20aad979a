"""Rows for the training loop from a Ray Data shard, with a resumable data position.

Each worker iterates its shard (`ray.train.get_dataset_shard("train")`, a streaming split of the
Parquet split) in micro-batches of `batch_size` rows, epoch after epoch. `drop_last=True` and Ray
Train's equal split give every rank the same number of micro-batches per epoch, so collectives
line up. The position is (epoch, micro-batches consumed in that epoch); a resumed run skips that
many micro-batches of that epoch (Parquet rows only; images are read after, in `build_batch`).
With `preserve_order` set on the dataset (the launcher does) the split is deterministic, so the
skipped rows are the rows the first attempt consumed.

Usage:
    for rows, pos in row_batches(shard, batch_size=4, start=DataPosition(epoch=1, batches=3)):
        ...   # rows: list of dicts; pos: where to resume after this micro-batch
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from echo_ray.errors import InputError


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    batches: int = 0  # micro-batches consumed in `epoch`

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def row_batches(shard: Any, batch_size: int,
                start: DataPosition = DataPosition()) -> Iterator[tuple[list[dict], DataPosition]]:  # fmt: skip
    """Endless micro-batches of row dicts from a Ray DataIterator (one pass per epoch)."""
    epoch, skip = start.epoch, start.batches
    while True:
        n = 0
        for table in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", drop_last=True, prefetch_batches=1):
            n += 1
            if n <= skip:
                continue
            yield table.to_pylist(), DataPosition(epoch, n)
        if n == 0:
            raise InputError(f"this worker's data shard has fewer than batch_size={batch_size} rows")
        epoch, skip = epoch + 1, 0
