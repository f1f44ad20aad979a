"""Tolerant readers for the CSV / JSON / text files that corpora ship, with per-row problems.

A distributor's CSV can hold malformed rows (wrong field count), bytes that are not UTF-8, or
unparseable quoting. Those rows must not be skipped silently, nor stop the run: `read_csv_rows`
yields every row with an issue key and detail so the adapter can emit a quarantine record. A file
that cannot be used at all (missing, unreadable, no required columns) is an `InputError`.

Usage:
    for row in read_csv_rows(path, required=("uid", "findings")):
        if row.issue: ...   # "malformed_row" / "not_utf8", with row.detail
        row.values["findings"]
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from echo_ray.errors import InputError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class CsvRow:
    line: int  # 1-based line number where the row ends
    values: dict[str, str] = field(default_factory=dict)
    issue: str = ""
    detail: str = ""


def source_root(path: str, name: str) -> Path:
    """The adapter's input path, expanded; a missing one is a one-line error naming the source."""
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(f"{name}: input path not found: {root}")
    return root


def read_bytes(path: Path) -> bytes:
    """Whole file (transparently gunzipped for *.gz); OSError -> InputError naming the file."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read {path}: {e.__class__.__name__}: {e}") from None


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, problem): strict UTF-8 (a BOM is dropped); else latin-1 text and a 'not_utf8' problem."""
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as e:
        return data.decode("latin-1"), f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"


def read_text_file(path: Path) -> tuple[str, str, str]:
    """(text, issue, detail) for one report file; issue is '' / 'unreadable_file' / 'not_utf8'."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return "", "unreadable_file", f"{path}: {e.__class__.__name__}: {e.strerror or e}"
    text, problem = decode_text(data)
    return (text, "not_utf8", f"{path}: {problem}") if problem else (text, "", "")


def _has_bad_bytes(values: list[str]) -> bool:
    return any("\udc80" <= ch <= "\udcff" for v in values for ch in v)


def read_csv_rows(path: Path, required: tuple[str, ...] = ()) -> Iterator[CsvRow]:
    """Every data row of a CSV file, flagged instead of dropped when it is malformed."""
    text = read_bytes(path).decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: empty CSV file (no header row)") from None
    except csv.Error as e:
        raise InputError(f"{path}: unreadable CSV header: {e}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing}; found {header}")
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield CsvRow(reader.line_num, {}, "malformed_row", f"{path.name} line {reader.line_num}: {e}")
            continue
        if not any(f.strip() for f in fields):
            continue  # blank line: not a record
        row = CsvRow(reader.line_num, dict(zip(header, fields)))
        if len(fields) != len(header):
            row.issue = "malformed_row"
            row.detail = f"{path.name} line {reader.line_num}: expected {len(header)} fields, got {len(fields)}"
        elif _has_bad_bytes(fields):
            row.issue = "not_utf8"
            row.detail = f"{path.name} line {reader.line_num}: bytes that are not UTF-8"
            row.values = {k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in row.values.items()}
        yield row


def parse_list(value: Any) -> list[str]:
    """A cell holding a list: JSON/Python-literal list text, a real list, or one plain value."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v).strip()]
    s = str(value).strip()
    if not s:
        return []
    if s.startswith("["):
        try:
            parsed = json.loads(s)
        except json.JSONDecodeError:
            try:
                parsed = json.loads(s.replace("'", '"'))
            except json.JSONDecodeError:
                parsed = [p.strip(" '\"") for p in s.strip("[]").split(",")]
        return [str(v) for v in parsed if v is not None and str(v).strip()]
    return [s]
