"""Filters: threshold, best_of_n, dedupe, sql; validation; determinism; the `filter` CLI command."""

from __future__ import annotations

import json
import random

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recon_data.cli_score import app, parse_filter
from recon_data.errors import ReconError
from recon_data.filters import apply_filters


def sample_rows():
    rows = []
    for rid in ("a", "b"):
        for seed in (0, 1):
            for idx in range(3):
                rows.append(
                    {
                        "id": rid,
                        "seed": seed,
                        "sample_index": idx,
                        "completion": f"{rid} {seed} {idx}",
                        "score.x": float(idx),
                        "label.x": "hack" if idx == 2 else "correct",
                    }
                )
    rows[0]["score.x"] = None
    rows[1]["score.x"] = float("nan")
    return rows


def keys(rows):
    return [(r["id"], r["seed"], r["sample_index"]) for r in rows]


def test_threshold_min_max_and_null_scores_are_dropped_with_reason():
    kept, stats = apply_filters(
        sample_rows(), [{"type": "threshold", "column": "score.x", "min": 1, "max": 1.5}]
    )
    assert keys(kept) == [("a", 1, 1), ("b", 0, 1), ("b", 1, 1)]
    assert stats == [
        {
            "filter": "threshold",
            "rows_in": 12,
            "rows_out": 3,
            "reason": "kept score.x >= 1 and score.x <= 1.5; dropped 3 below min, 4 above max, 2 null",
        }
    ]


def test_best_of_n_ties_broken_by_seed_then_sample_index():
    rows = [
        {"id": "a", "seed": s, "sample_index": i, "completion": f"{s}{i}", "score.x": 1.0}
        for s in (2, 1)
        for i in (1, 0)
    ]
    kept, _ = apply_filters(rows, [{"type": "best_of_n", "column": "score.x", "k": 1}])
    assert keys(kept) == [("a", 1, 0)]
    kept, _ = apply_filters(rows, [{"type": "best_of_n", "column": "score.x", "k": 3}])
    assert sorted(keys(kept)) == [("a", 1, 0), ("a", 1, 1), ("a", 2, 0)]


def test_best_of_n_per_record_is_independent_of_input_order():
    rows = sample_rows()
    expected = sorted(keys(apply_filters(rows, [{"type": "best_of_n", "column": "score.x", "k": 2}])[0]))
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        kept, stats = apply_filters(shuffled, [{"type": "best_of_n", "column": "score.x", "k": 2}])
        assert sorted(keys(kept)) == expected
    assert expected == [("a", 0, 2), ("a", 1, 2), ("b", 0, 2), ("b", 1, 2)]
    assert "2 null dropped" in stats[0]["reason"]


def test_best_of_n_min_order_and_null_never_selected():
    rows = [
        {"id": "a", "seed": 0, "sample_index": 0, "score.x": None},
        {"id": "a", "seed": 0, "sample_index": 1, "score.x": 5.0},
    ]
    kept, _ = apply_filters(rows, [{"type": "best_of_n", "column": "score.x", "order": "min"}])
    assert keys(kept) == [("a", 0, 1)]


def test_dedupe_exact_is_per_record_on_normalized_text():
    rows = [
        {"id": "a", "seed": 0, "sample_index": i, "completion": c}
        for i, c in enumerate(["Hello  World", "hello world", "other"])
    ]
    rows.append({"id": "b", "seed": 0, "sample_index": 0, "completion": "hello world"})
    kept, stats = apply_filters(rows, [{"type": "dedupe"}])
    assert keys(kept) == [("a", 0, 0), ("a", 0, 2), ("b", 0, 0)]
    assert "dropped 1 exact" in stats[0]["reason"]
    kept, _ = apply_filters(rows, [{"type": "dedupe", "by": None}])
    assert len(kept) == 2


def test_dedupe_near_duplicates_by_word_5gram_jaccard():
    base = (
        "the model wrote a long answer about the capital of australia which is canberra and not sydney at all"
    )
    rows = [
        {"id": "a", "seed": 0, "sample_index": 0, "completion": base},
        {"id": "a", "seed": 0, "sample_index": 1, "completion": base + " indeed"},
        {"id": "a", "seed": 0, "sample_index": 2, "completion": "a completely different answer about ottawa"},
    ]
    exact, _ = apply_filters(rows, [{"type": "dedupe"}])
    near, stats = apply_filters(rows, [{"type": "dedupe", "near": True, "threshold": 0.8}])
    strict, _ = apply_filters(rows, [{"type": "dedupe", "near": True, "threshold": 1.0}])
    assert len(exact) == 3 and len(strict) == 3
    assert keys(near) == [("a", 0, 0), ("a", 0, 2)]
    assert "1 near" in stats[0]["reason"]
    shuffled = [rows[1], rows[2], rows[0]]
    assert sorted(
        keys(apply_filters(shuffled, [{"type": "dedupe", "near": True, "threshold": 0.8}])[0])
    ) == sorted(keys(near))


def test_sql_predicate_over_dotted_columns():
    kept, stats = apply_filters(
        sample_rows(), [{"type": "sql", "where": '"score.x" >= 1 AND "label.x" = \'hack\''}]
    )
    assert keys(kept) == [("a", 0, 2), ("a", 1, 2), ("b", 0, 2), ("b", 1, 2)]
    assert stats[0]["rows_out"] == 4


@pytest.mark.parametrize("where", ['"score.nope" > 1', '"score.x" >>>', "score.x > 1"])
def test_sql_errors_quote_the_predicate(where):
    with pytest.raises(ReconError) as info:
        apply_filters(sample_rows(), [{"type": "sql", "where": where}])
    assert repr(where) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "filters, match",
    [
        ([{"type": "top_p"}], "unknown type"),
        ([{"type": "threshold", "column": "score.x"}], "min and/or max"),
        ([{"type": "threshold", "column": "score.x", "min": 2, "max": 1}], "greater than"),
        ([{"type": "threshold", "column": "score.missing", "min": 1}], "not found"),
        ([{"type": "best_of_n", "column": "score.x", "k": 0}], "k must be"),
        ([{"type": "best_of_n", "column": "score.x", "kk": 1}], "unknown keys"),
        ([{"type": "dedupe", "threshold": 1.5}], "threshold"),
        ([{"type": "sql", "where": " "}], "non-empty"),
        ("threshold", "list"),
    ],
)
def test_bad_filter_configs_are_recon_errors(filters, match):
    with pytest.raises(ReconError, match=match):
        apply_filters(sample_rows(), filters)


def test_filters_chain_and_stats_list():
    kept, stats = apply_filters(
        sample_rows(),
        [
            {"type": "threshold", "column": "score.x", "min": 1},
            {"type": "best_of_n", "column": "score.x", "k": 1},
        ],
    )
    assert [s["filter"] for s in stats] == ["threshold", "best_of_n"]
    assert [s["rows_in"] for s in stats] == [12, stats[0]["rows_out"]]
    assert keys(kept) == [("a", 0, 2), ("b", 0, 2)]


def test_parse_filter_compact_form():
    assert parse_filter("threshold:column=score.x,min=0.5") == {
        "type": "threshold",
        "column": "score.x",
        "min": 0.5,
    }
    assert parse_filter("dedupe:near=true") == {"type": "dedupe", "near": True}


def test_cli_filter_reads_parquet_writes_parquet_and_stats(tmp_path):
    import pyarrow as pa

    src = tmp_path / "scored.parquet"
    rows = sample_rows()
    rows[1]["score.x"] = None
    pq.write_table(pa.Table.from_pylist(rows), src)
    out, stats = tmp_path / "kept.parquet", tmp_path / "stats.json"
    res = CliRunner().invoke(
        app,
        [
            "filter",
            str(src),
            "-o",
            str(out),
            "-f",
            "best_of_n:column=score.x,k=1",
            "-w",
            "\"label.x\" = 'hack'",
            "--stats-out",
            str(stats),
        ],
    )
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).num_rows == 2
    assert [s["filter"] for s in json.loads(stats.read_text())] == ["best_of_n", "sql"]
