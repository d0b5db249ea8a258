"""Built-in task suites: a registry of data modules plus the conversion of records to an Arrow table.

A suite is data, not a code path: each module exposes `DESCRIPTION` and `build(seed) -> list[dict]`
(records with `id`, `suite`, `split`, `input`, `reference`; see docs/ARCHITECTURE.md). What a model is
asked and how it is graded lives in templates and scorers, never here. User data comes in through
`loaders.load_records`, which returns the same record shape.
"""

from __future__ import annotations

import json
from types import ModuleType

import pyarrow as pa

from ..errors import ReconError
from . import code_test_hacking, conditional_policy, deception, eval_gaming, sycophancy

SUITES: dict[str, ModuleType] = {
    "code_test_hacking": code_test_hacking,
    "eval_gaming": eval_gaming,
    "deception": deception,
    "sycophancy": sycophancy,
    "conditional_policy": conditional_policy,
}
SPLITS = ("train", "eval")
COLUMNS = ("id", "suite", "split", "input", "reference")
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])


def _module(name: str) -> ModuleType:
    if name not in SUITES:
        raise ReconError(
            f"unknown suite '{name}'; built-in suites: {', '.join(SUITES)} (see `recon suites list`)"
        )
    return SUITES[name]


def load_suite(name: str, *, split: str | None = None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Records of a built-in suite, optionally one split and the first `limit` of them (stable order)."""
    module = _module(name)
    if split is not None and split not in SPLITS:
        raise ReconError(f"unknown split '{split}' for suite '{name}'; use one of {', '.join(SPLITS)}")
    if limit is not None and limit < 0:
        raise ReconError(f"limit must be >= 0, got {limit}")
    records = module.build(seed)
    if split is not None:
        records = [r for r in records if r["split"] == split]
    return records if limit is None else records[:limit]


def _encode(value: object, where: str) -> str:
    if isinstance(value, str):  # already JSON (e.g. read back from a table): keep it, but it must parse
        try:
            json.loads(value)
        except ValueError:
            raise ReconError(f"record {where}: expected a JSON object string") from None
        return value
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise ReconError(f"record {where}: not JSON-serialisable ({err})") from None


def records_to_table(records: list[dict]) -> pa.Table:
    """Records -> Arrow table with string columns id, suite, split, input, reference (JSON, sorted keys)."""
    columns: dict[str, list[str]] = {c: [] for c in COLUMNS}
    for i, rec in enumerate(records):
        missing = [c for c in COLUMNS if c not in rec]
        if missing:
            raise ReconError(f"record {i} (id {rec.get('id')!r}) lacks field(s) {missing}")
        for c in ("id", "suite", "split"):
            columns[c].append(str(rec[c]))
        columns["input"].append(_encode(rec["input"], f"{rec['id']} input"))
        columns["reference"].append(_encode(rec["reference"], f"{rec['id']} reference"))
    return pa.table(columns, schema=SCHEMA)


def table_to_records(table: pa.Table) -> list[dict]:
    """The inverse of records_to_table (input/reference decoded back to dicts)."""
    rows = table.select(list(COLUMNS)).to_pylist()
    for row in rows:
        row["input"] = json.loads(row["input"])
        row["reference"] = json.loads(row["reference"])
    return rows


def suite_info(seed: int = 0) -> list[dict]:
    """One row per suite: name, description, record counts per split."""
    rows = []
    for name, module in SUITES.items():
        records = module.build(seed)
        counts = {s: sum(r["split"] == s for r in records) for s in SPLITS}
        rows.append({"name": name, "description": module.DESCRIPTION, **counts, "total": len(records)})
    return rows
