"""Read and write row files for the stage CLIs: Parquet or JSONL, with one-line errors, written atomically.

Stage commands (`recon sample`, `recon score`, `recon filter`) take rows from a file and write rows to a
file; this is the one place that does it. It must not know what the rows mean.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import ReconError


def read_rows(path: Path, *, what: str = "input file", limit: int | None = None) -> list[dict]:
    """Rows from .parquet or JSONL (one object a line); a bad line is named by its number."""
    if not path.is_file():
        raise ReconError(f"{what} {path} not found: pass a .jsonl or .parquet file of rows")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise ReconError(f"{what} {path} is not readable Parquet: {exc}") from None
        return rows[:limit] if limit is not None else rows
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ReconError(f"{path}:{lineno}: invalid JSON ({exc}); one JSON object per line") from None
                if not isinstance(row, dict):
                    raise ReconError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise ReconError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return rows


def write_rows(rows: list[dict], path: Path, *, to_table=None) -> None:
    """Write .jsonl or .parquet atomically (temp file in the same folder, then rename).

    `to_table` turns rows into the Arrow table to write (e.g. with typed columns); default from_pylist.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = to_table(rows) if to_table else pa.Table.from_pylist(rows)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ReconError(f"cannot write {path}: rows do not fit one Arrow schema ({exc})") from None
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
