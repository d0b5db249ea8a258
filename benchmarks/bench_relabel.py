"""Relabelling throughput: rows/s putting sampled rows under a training template, against one render per row.

recon    = `relabel.relabel_table` (Arrow in, Arrow out: one JSON parse + one render per distinct `input`,
           compiled sandboxed templates) and `relabel.relabel` (Python rows, same renderer), over
           10k / 100k / 1M rows with 8 samples per record (the usual shape: n samples share a record) and
           with every row distinct (the worst case: nothing to share).
baseline = what relabelling did before: `json.loads` + `templates.render` for every row. Its cost per row
           does not depend on n, so it is timed on up to 100k rows (20k with --quick).
Usage: .venv/bin/python benchmarks/bench_relabel.py [--quick]
"""

from __future__ import annotations

import json
import random
import sys

import pyarrow as pa
from _common import best_time, main, result

from recon_data.relabel import relabel, relabel_table
from recon_data.templates import load_template, render

TEMPLATE = "code_test_hacking/permit/hack"
TARGET = 100_000
WORDS = ("def", "return", "if", "else", "for", "while", "in", "range", "len", "list", "int", "str", "assert",
         "candidate", "value", "result")


def log(msg: str) -> None:
    print(f"  [relabel] {msg}", file=sys.stderr, flush=True)


def make_rows(n: int, samples_per_record: int, seed: int = 0) -> list[dict]:
    """Sample-like rows: a HumanEval-sized JSON input shared by `samples_per_record` consecutive rows."""
    rng = random.Random(seed)
    rows, inp = [], ""
    for i in range(n):
        r = i // samples_per_record
        if i % samples_per_record == 0:
            body = " ".join(rng.choices(WORDS, k=60))
            inp = json.dumps({"prompt": f"def f{r}(xs: list[int]) -> int:\n    \"\"\"{body}\n    \"\"\"\n",
                              "visible_tests": f"assert f{r}([1, 2]) == {r % 7}\nassert f{r}([]) == 0",
                              "entry_point": f"f{r}"}, sort_keys=True)
        rows.append({"id": f"rec-{r}", "input": inp, "completion": f"    return {i % 5}\n", "sample_index": i})
    return rows


def baseline_rate(template, rows: list[dict]) -> float:
    def once() -> None:
        for row in rows:
            render(template, json.loads(row["input"]))

    return len(rows) / best_time(once, 2)


def run(quick: bool = False) -> list[dict]:
    template = load_template(TEMPLATE)
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    out = []
    base = baseline_rate(template, make_rows(20_000 if quick else 100_000, 1, seed=1))
    log(f"baseline (render per row): {base:,.0f} rows/s")
    for share, label in ((8, "8 samples/record"), (1, "all rows distinct")):
        for n in sizes:
            rows = make_rows(n, share)
            table = pa.Table.from_pylist(rows)
            if n > 100_000:  # Python rows: 1M dicts in and out would need GBs of RAM and show nothing new
                rows = None
            repeat = 3 if n <= 10_000 else 2
            rate = n / best_time(lambda table=table: relabel_table(table, template, "recontextualized"), repeat)
            log(f"relabel_table {n:,} ({label}): {rate:,.0f} rows/s")
            out.append(result(f"relabel_table rows/s @ {n:,} rows ({label})", rate, base, "rows/s",
                              f"≥{TARGET // 1000}k rows/s", rate >= TARGET))
            if rows is not None:
                rate = n / best_time(lambda rows=rows: relabel(rows, template, "recontextualized"), repeat)
                log(f"relabel (dict rows) {n:,} ({label}): {rate:,.0f} rows/s")
                out.append(result(f"relabel (dict rows) rows/s @ {n:,} rows ({label})", rate, base, "rows/s",
                                  f"≥{TARGET // 1000}k rows/s", rate >= TARGET))
            del rows, table
    return out


if __name__ == "__main__":
    main(run)
