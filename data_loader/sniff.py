"""Telling a binary file from text before a table reader fails on it with an encoding error (whose
fix, ``data.encoding``, cannot help a file that is not text at all)."""
from __future__ import annotations

import codecs
from pathlib import Path

SAMPLE = 1 << 16  # bytes looked at: enough for the header and many rows
_MAGIC = {b"PAR1": "a Parquet file (name it .parquet or set data.format parquet)",
          b"\x1f\x8b": "gzip-compressed (decompress it first)", b"PK\x03\x04": "a ZIP archive (an .xlsx or .zip)",
          b"BZh": "bzip2-compressed (decompress it first)", b"\xfd7zXZ": "xz-compressed (decompress it first)",
          b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"SQLite format": "an SQLite database"}
_BOMS = {codecs.BOM_UTF32_LE: "utf-32", codecs.BOM_UTF32_BE: "utf-32", codecs.BOM_UTF16_LE: "utf-16",
         codecs.BOM_UTF16_BE: "utf-16"}  # UTF-32's little-endian BOM starts with UTF-16's: checked first
_CONTROL = set(range(0x00, 0x09)) | {0x0B} | set(range(0x0E, 0x20)) | {0x7F}


def not_text(path: Path, encoding: str) -> str | None:
    """Why ``path`` cannot be a text table in ``encoding`` (None when it may be)."""
    with open(path, "rb") as f:
        head = f.read(SAMPLE)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return f"it is {what}"
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    for bom, name in _BOMS.items():
        if head.startswith(bom) and not wide:
            return f"it is {name.upper()} text (set data.encoding: {name})"
    if wide:
        return None
    if (nul := head.find(b"\0")) >= 0:
        return f"binary content: a NUL byte at position {nul}"
    control = sum(b in _CONTROL for b in head)
    if control > 0.05 * len(head):
        return f"binary content: {control:,} control bytes in its first {len(head):,}"
    return None
