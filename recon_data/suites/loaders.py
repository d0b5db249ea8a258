"""Load user data (JSONL, Parquet, CSV, a local HF `datasets` folder) as suite records.

A field mapping says which column becomes what: `{"id": col, "input": {var: col, ...},
"reference": {key: col, ...}, "split": col}`; `id` and `split` are optional (default: row number, and a
split by hash of the id). Every user mistake — a missing column, a non-UTF-8 or broken line, an empty
file, duplicate ids, an unknown split value — is a ReconError naming the file (and line or column). This
module reads only local files; it must not download anything.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from ..errors import ReconError
from ._common import split_for

FORMATS = ("jsonl", "parquet", "csv", "hf")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
_SPLIT_ALIASES = {
    "train": "train",
    "eval": "eval",
    "test": "eval",
    "validation": "eval",
    "valid": "eval",
    "dev": "eval",
}


def detect_format(path: Path) -> str:
    """The format from the path: a directory is a `datasets` folder, otherwise the file suffix."""
    if path.is_dir():
        return "hf"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ReconError(
            f"{path}: cannot tell the format from the suffix '{path.suffix}'; use .jsonl, .parquet, "
            ".csv or a `datasets` folder, or pass format=jsonl|parquet|csv|hf"
        )
    return fmt


def _decode(path: Path) -> str:
    """The file as text; a non-UTF-8 byte is reported with its line number."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ReconError(f"{path}: the file is empty; it needs at least one record")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ReconError(
            f"{path}:{line}: not valid UTF-8 (byte {raw[err.start]:#04x}); re-save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReconError(
                f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno}); each line must "
                "be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise ReconError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    text = _decode(path)
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ReconError(f"{path}:{line}: NUL byte in a CSV file; is this really CSV text?")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        for row in reader:
            if None in row:  # more cells than header names
                raise ReconError(f"{path}:{reader.line_num}: more values than columns in the header")
            rows.append(row)
    except csv.Error as err:
        raise ReconError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise ReconError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def _read_hf(path: Path) -> list[dict]:
    """A folder written by `Dataset.save_to_disk` (or a DatasetDict: its split names become splits)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise ReconError(f"{path}: not a `datasets` folder saved with save_to_disk ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        rows = []
        for split_name, part in ds.items():
            rows.extend({"__split__": split_name, **row} for row in part.to_list())
        return rows
    return ds.to_list()


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv, "hf": _read_hf}


def _check_mapping(mapping: Mapping) -> None:
    if (
        not isinstance(mapping, Mapping)
        or not isinstance(mapping.get("input"), Mapping)
        or not mapping["input"]
    ):
        raise ReconError(
            "field mapping needs 'input': {variable: column, ...} with at least one entry "
            "(plus optional 'id', 'reference', 'split')"
        )
    unknown = set(mapping) - {"id", "input", "reference", "split"}
    if unknown:
        raise ReconError(
            f"field mapping has unknown key(s) {sorted(unknown)}; allowed: id, input, reference, split"
        )
    if not isinstance(mapping.get("reference", {}), Mapping):
        raise ReconError("field mapping 'reference' must be {key: column, ...}")


def _split_value(value: object, path: Path, row_no: int) -> str:
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise ReconError(
            f"{path}: row {row_no}: split value {value!r} is not one of {', '.join(sorted(_SPLIT_ALIASES))}"
        )
    return split


def load_records(
    path: str | Path,
    *,
    format: str | None = None,
    mapping: Mapping,  # noqa: A002
    suite_name: str,
) -> list[dict]:
    """Read a user file into records {id, suite, split, input, reference} via the field mapping."""
    path = Path(path)
    if not path.exists():
        raise ReconError(f"data file not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ReconError(f"unknown data format '{fmt}' for {path}; use one of {', '.join(FORMATS)}")
    _check_mapping(mapping)
    rows = _READERS[fmt](path)
    if not rows:
        raise ReconError(f"{path}: no records found; the file is empty")
    columns = set().union(*(row.keys() for row in rows))
    wanted = {"input": dict(mapping["input"]), "reference": dict(mapping.get("reference") or {})}
    named = [
        *wanted["input"].values(),
        *wanted["reference"].values(),
        *(mapping[k] for k in ("id", "split") if mapping.get(k)),
    ]
    for col in named:
        if col not in columns:
            raise ReconError(
                f"{path}: column '{col}' (named in the field mapping) not found; the file has: "
                f"{', '.join(sorted(map(str, columns)))}"
            )
    records, seen = [], set()
    for n, row in enumerate(rows, start=1):
        for col in named:
            if col not in row:
                raise ReconError(f"{path}: row {n} has no column '{col}'")
        rid = str(row[mapping["id"]]) if mapping.get("id") else f"{suite_name}/{n - 1:06d}"
        if mapping.get("id") and (row[mapping["id"]] is None or rid == ""):
            raise ReconError(f"{path}: row {n} has an empty id in column '{mapping['id']}'")
        if rid in seen:
            raise ReconError(f"{path}: duplicate id '{rid}' at row {n}; ids must be unique")
        seen.add(rid)
        if mapping.get("split"):
            split = _split_value(row[mapping["split"]], path, n)
        elif "__split__" in row:
            split = _split_value(row["__split__"], path, n)
        else:
            split = split_for(rid)
        records.append(
            {
                "id": rid,
                "suite": suite_name,
                "split": split,
                "input": {var: row[col] for var, col in wanted["input"].items()},
                "reference": {key: row[col] for key, col in wanted["reference"].items()},
            }
        )
    return records
