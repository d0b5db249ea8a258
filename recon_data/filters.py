"""Filters that select which scored samples become training data: threshold, best_of_n, dedupe, sql.

`apply_filters(rows, filters)` runs the configured filters in order and returns the kept rows (input
order preserved) plus one stats dict per filter {filter, rows_in, rows_out, reason} for the version
manifest. Every config is validated before any filter runs; a bad config or a missing column is a
one-line ReconError. Filters are deterministic: the same rows in any order give the same kept set
(ties are broken by (seed, sample_index), then by the completion text).

Filter configs:
- `{"type": "threshold", "column": "score.x", "min": 0.5, "max": null}` — rows whose value is null/NaN
  are dropped (counted in the reason).
- `{"type": "best_of_n", "column": "score.x", "k": 1, "by": "id", "order": "max"}` — top k per group;
  rows with a null score are never selected.
- `{"type": "dedupe", "near": false, "threshold": 0.9, "column": "completion", "by": "id"}` — exact
  duplicates of the normalized text (casefolded, whitespace collapsed) per group; with `near: true` also
  near duplicates: word 5-gram Jaccard >= threshold (MinHash-LSH candidates, verified exactly). `by: null`
  dedupes across all rows.
- `{"type": "sql", "where": "\"score.x\" > 0.5 AND \"label.x\" = 'hack'"}` — a DuckDB predicate over the
  rows as an Arrow table named `rows`.

This module must not score, relabel or write anything; it only selects rows.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from functools import lru_cache
from typing import Any

from .errors import ReconError

FILTER_KEYS = {
    "threshold": ({"column"}, {"min", "max"}),
    "best_of_n": ({"column"}, {"k", "by", "order"}),
    "dedupe": (set(), {"near", "threshold", "column", "by", "shingle"}),
    "sql": ({"where"}, set()),
}


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _validate(filters: list[dict]) -> list[dict]:
    if not isinstance(filters, (list, tuple)):
        raise ReconError("filters must be a list of mappings, each with a 'type'")
    out = []
    for i, cfg in enumerate(filters):
        if hasattr(cfg, "model_dump"):  # a pydantic FilterConfig from config.py
            cfg = cfg.model_dump()
        if not isinstance(cfg, dict):
            raise ReconError(f"filter #{i + 1} must be a mapping with a 'type'")
        kind = cfg.get("type")
        where = f"filter #{i + 1} ({kind})"
        if kind not in FILTER_KEYS:
            raise ReconError(f"filter #{i + 1}: unknown type {kind!r}; use one of {', '.join(FILTER_KEYS)}")
        required, optional = FILTER_KEYS[kind]
        keys = set(cfg) - {"type"}
        if required - keys:
            raise ReconError(f"{where}: missing {sorted(required - keys)}")
        if keys - required - optional:
            raise ReconError(
                f"{where}: unknown keys {sorted(keys - required - optional)}; "
                f"allowed: {sorted(required | optional)}"
            )
        cfg = dict(cfg)
        if kind == "threshold":
            lo, hi = cfg.get("min"), cfg.get("max")
            if lo is None and hi is None:
                raise ReconError(f"{where}: give min and/or max")
            for key in ("min", "max"):
                if cfg.get(key) is not None and _num(cfg[key]) is None:
                    raise ReconError(f"{where}: {key} must be a number, got {cfg[key]!r}")
            if lo is not None and hi is not None and float(lo) > float(hi):
                raise ReconError(f"{where}: min {lo} is greater than max {hi}")
        elif kind == "best_of_n":
            k = cfg.setdefault("k", 1)
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ReconError(f"{where}: k must be an integer >= 1, got {k!r}")
            if cfg.setdefault("order", "max") not in {"max", "min"}:
                raise ReconError(f"{where}: order must be 'max' or 'min'")
            cfg.setdefault("by", "id")
        elif kind == "dedupe":
            t = cfg.setdefault("threshold", 0.9)
            if _num(t) is None or not 0 < float(t) <= 1:
                raise ReconError(f"{where}: threshold must be in (0, 1], got {t!r}")
            cfg.setdefault("near", False)
            cfg.setdefault("column", "completion")
            cfg.setdefault("by", "id")
            shingle = cfg.setdefault("shingle", 5)
            if not isinstance(shingle, int) or shingle < 1:
                raise ReconError(f"{where}: shingle must be an integer >= 1")
        elif kind == "sql" and (not isinstance(cfg["where"], str) or not cfg["where"].strip()):
            raise ReconError(f"{where}: 'where' must be a non-empty SQL predicate")
        out.append(cfg)
    return out


def _require_columns(rows: list[dict], columns: list[str | None], where: str) -> None:
    if not rows:
        return
    present = set().union(*(r.keys() for r in rows[:1000]))
    for col in columns:
        if col is not None and col not in present:
            sample = ", ".join(sorted(present)[:20])
            raise ReconError(f"{where}: column {col!r} not found in the rows (columns: {sample})")


def _tiebreak(row: dict) -> tuple:
    """Deterministic order independent of input order: (seed, sample_index, completion text)."""
    seed, idx = row.get("seed"), row.get("sample_index")
    return (
        seed if isinstance(seed, int) else -1,
        idx if isinstance(idx, int) else -1,
        str(row.get("completion", "")),
        str(row.get("sample_key", "")),
    )


def threshold(
    rows: list[dict], column: str, min: float | None = None, max: float | None = None
) -> tuple[list, str]:
    kept, nulls, low, high = [], 0, 0, 0
    for r in rows:
        v = _num(r.get(column))
        if v is None:
            nulls += 1
        elif min is not None and v < float(min):
            low += 1
        elif max is not None and v > float(max):
            high += 1
        else:
            kept.append(r)
    bounds = " and ".join(
        s
        for s in (
            f"{column} >= {min}" if min is not None else "",
            f"{column} <= {max}" if max is not None else "",
        )
        if s
    )
    return kept, f"kept {bounds}; dropped {low} below min, {high} above max, {nulls} null"


def best_of_n(
    rows: list[dict], column: str, k: int = 1, by: str | None = "id", order: str = "max"
) -> tuple[list, str]:
    groups: dict[Any, list[int]] = defaultdict(list)
    nulls = 0
    for i, r in enumerate(rows):
        if _num(r.get(column)) is None:
            nulls += 1
            continue
        groups[r.get(by) if by else None].append(i)
    keep: set[int] = set()
    sign = -1.0 if order == "max" else 1.0
    for idxs in groups.values():
        idxs.sort(key=lambda i: (sign * _num(rows[i][column]), _tiebreak(rows[i])))
        keep.update(idxs[:k])
    kept = [r for i, r in enumerate(rows) if i in keep]
    return kept, (
        f"top {k} per {by or 'all rows'} by {column} ({order}), ties by seed, sample_index; "
        f"{len(groups)} groups, {nulls} null dropped"
    )


def _normalize(text: Any) -> str:
    return " ".join(str(text or "").casefold().split())


def _shingles(text: str, n: int) -> set[str]:
    words = re.findall(r"\w+", text)
    if len(words) < n:
        return {" ".join(words)} if words else {""}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@lru_cache(maxsize=1)
def _perms(num_perm: int):
    import numpy as np

    rng = np.random.default_rng(1234)  # fixed: signatures must be deterministic
    return (
        rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64),
        rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64),
    )


def _minhash(shingles: set[str], num_perm: int = 64):
    import numpy as np

    prime = (1 << 61) - 1
    a, b = _perms(num_perm)
    x = np.array(
        [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") for s in shingles],
        dtype=np.uint64,
    )
    return ((a[:, None] * x[None, :] + b[:, None]) % np.uint64(prime)).min(axis=1)


def dedupe(
    rows: list[dict],
    near: bool = False,
    threshold: float = 0.9,
    column: str = "completion",
    by: str | None = "id",
    shingle: int = 5,
) -> tuple[list, str]:
    order = sorted(range(len(rows)), key=lambda i: (_tiebreak(rows[i]), i))
    seen: set[tuple] = set()
    keep: set[int] = set()
    exact = near_dups = 0
    kept_sets: dict[Any, list[set[str]]] = defaultdict(list)
    buckets: dict[tuple, list[int]] = defaultdict(list)  # (group, band, band hash) -> kept positions
    bands, rows_per_band = 16, 4
    for i in order:
        group = rows[i].get(by) if by else None
        norm = _normalize(rows[i].get(column))
        key = (repr(group), norm)
        if key in seen:
            exact += 1
            continue
        if near:
            sh = _shingles(norm, shingle)
            sig = _minhash(sh)
            band_keys = [
                (repr(group), b, sig[b * rows_per_band : (b + 1) * rows_per_band].tobytes())
                for b in range(bands)
            ]
            candidates = {j for bk in band_keys for j in buckets.get(bk, ())}
            group_sets = kept_sets[repr(group)]
            if any(
                len(sh & group_sets[j]) / len(sh | group_sets[j]) >= threshold for j in sorted(candidates)
            ):
                near_dups += 1
                continue
            for bk in band_keys:
                buckets[bk].append(len(group_sets))
            group_sets.append(sh)
        seen.add(key)
        keep.add(i)
    kept = [r for i, r in enumerate(rows) if i in keep]
    how = f"exact + near (word {shingle}-gram Jaccard >= {threshold})" if near else "exact"
    return kept, (
        f"dedupe {how} on normalized {column} per {by or 'all rows'}; "
        f"dropped {exact} exact, {near_dups} near duplicates"
    )


def sql(rows: list[dict], where: str) -> tuple[list, str]:
    import duckdb
    import pyarrow as pa

    if not rows:
        return [], f"WHERE {where}"
    idx_col = "__recon_row"
    try:
        table = pa.Table.from_pylist([{**r, idx_col: i} for i, r in enumerate(rows)])
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ReconError(f"sql filter: rows cannot be turned into an Arrow table ({exc})") from None
    con = duckdb.connect()
    try:
        con.register("rows", table)
        kept_idx = [
            i
            for (i,) in con.execute(
                f'SELECT "{idx_col}" FROM rows WHERE ({where}) ORDER BY "{idx_col}"'
            ).fetchall()
        ]
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReconError(
            f"sql filter: predicate {where!r} failed: {first} (quote dotted column names, "
            'e.g. "score.x" > 0.5)'
        ) from None
    finally:
        con.close()
    return [rows[i] for i in kept_idx], f"WHERE {where}"


def apply_filters(rows: list[dict], filters: list[dict]) -> tuple[list[dict], list[dict]]:
    """Run `filters` in order; returns (kept rows, stats per filter)."""
    configs = _validate(filters)
    stats = []
    current = list(rows)
    for i, cfg in enumerate(configs):
        kind = cfg["type"]
        where = f"filter #{i + 1} ({kind})"
        params = {k: v for k, v in cfg.items() if k != "type"}
        if kind in {"threshold", "best_of_n"} or kind == "dedupe":
            _require_columns(current, [cfg["column"], cfg.get("by")], where)
        n_in = len(current)
        current, reason = {"threshold": threshold, "best_of_n": best_of_n, "dedupe": dedupe, "sql": sql}[
            kind
        ](current, **params)
        stats.append({"filter": kind, "rows_in": n_in, "rows_out": len(current), "reason": reason})
    return current, stats
