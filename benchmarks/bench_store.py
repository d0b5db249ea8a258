"""Store overhead: `Store.commit`/`Store.read`/DuckDB views against bare pyarrow and DuckDB on the same data.

recon    = `Store.commit` (zstd Parquet parts, sha256 per file, fsync, manifest, atomic rename),
           `Store.read`, and a query through the views of `Store.connect()`.
baseline = `pyarrow.parquet.write_table`/`read_table` (zstd) of the same table, and the same query with
           DuckDB's `read_parquet` over the very file the store wrote (so only the view layer differs).
Also: per-row cost at 10k/100k/1M rows (linear growth expected) and the peak RSS of committing 1M rows
of ~1 KB each streamed as record batches from a generator (measured in a fresh subprocess).
Usage: .venv/bin/python benchmarks/bench_store.py [--quick]
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from _common import REPO, best_time, best_time_pair, main, result

from recon_data.store import Store

WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "this",
         "def", "return", "if", "else", "while", "assert", "candidate", "answer", "honest", "hack", "test", "value",
         "list", "int", "str", "print", "result", "true", "false", "none", "self")
QUERY = "SELECT seed, count(*) AS n, avg(\"score.proxy\") AS mean FROM {src} WHERE \"score.proxy\" > 0.3 GROUP BY seed"


def log(msg: str) -> None:
    print(f"  [store] {msg}", file=sys.stderr, flush=True)


def make_table(n: int, seed: int = 0) -> pa.Table:
    """Sample-like rows (~300 bytes): ids, JSON input, a completion, a score, a seed, chat messages."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=40)) for _ in range(1000)]
    ids = [f"rec-{i // 8:07d}" for i in range(n)]
    return pa.table({
        "id": ids,
        "input": [json.dumps({"task": texts[i % 997][:80], "n": i % 13}) for i in range(n)],
        "completion": [texts[(i * 7) % 1000] for i in range(n)],
        "score.proxy": [rng.random() for _ in range(n)],
        "seed": pa.array([i % 3 for i in range(n)], pa.int64()),
        "gen_messages": pa.array([[{"role": "user", "content": texts[i % 991][:60]}] for i in range(n)],
                                 pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    })


def bench_write_read(table: pa.Table, root: Path, repeat: int) -> list[dict]:
    store = Store(root / "store")
    n = table.num_rows
    bare = root / "bare.parquet"
    t_commit, t_write = best_time_pair(lambda: store.commit("bench", table),
                                       lambda: pq.write_table(table, bare, compression="zstd"), repeat)
    t_read, t_bare_read = best_time_pair(lambda: store.read("bench"), lambda: pq.read_table(bare), repeat)
    assert store.read("bench").equals(table)
    log(f"write/read {n:,} rows: commit {t_commit:.2f}s vs {t_write:.2f}s, read {t_read:.2f}s vs {t_bare_read:.2f}s")
    return [
        result(f"commit {n:,} rows", t_commit, t_write, "s", "≤1.5× write_table", t_commit <= 1.5 * t_write),
        result(f"read {n:,} rows", t_read, t_bare_read, "s", "≤1.5× read_table", t_read <= 1.5 * t_bare_read),
    ]


def bench_duckdb(root: Path, repeat: int) -> list[dict]:
    import duckdb

    store = Store(root / "store")
    version = store.versions("bench")[-1]
    part = store.files(f"bench@{version}")[0]
    t0 = time.perf_counter()
    con = store.connect()
    t_connect = time.perf_counter() - t0
    bare = duckdb.connect()
    recon_sql = QUERY.format(src=f'"bench@{version}"')
    bare_sql = QUERY.format(src=f"read_parquet('{part}')")
    def answer(c, sql):  # parallel float sums differ in the last bits; compare rounded
        return sorted((seed, n, round(mean, 9)) for seed, n, mean in c.execute(sql).fetchall())

    assert answer(con, recon_sql) == answer(bare, bare_sql)
    t_view, t_bare = best_time_pair(lambda: con.execute(recon_sql).fetchall(),
                                    lambda: bare.execute(bare_sql).fetchall(), repeat + 4)
    versions = len(store.versions("bench"))
    log(f"duckdb group-by: view {t_view * 1e3:.1f} ms vs bare {t_bare * 1e3:.1f} ms; connect {t_connect * 1e3:.1f} ms")
    return [
        result("DuckDB group-by over a version (view vs read_parquet)", t_view * 1e3, t_bare * 1e3, "ms",
               "≤1.1×", t_view <= 1.1 * t_bare),
        result(f"Store.connect() ({versions} versions of 1 dataset)", t_connect * 1e3, None, "ms", "informational"),
    ]


def bench_connect_many(root: Path, datasets: int) -> list[dict]:
    """`Store.connect()` creates a view per version of every dataset: its cost grows with the store."""
    store = Store(root / "many")
    small = pa.table({"x": [1, 2, 3]})
    for i in range(datasets):
        store.commit(f"d{i:04d}", small)
    con = None

    def connect() -> None:
        nonlocal con
        con = store.connect()

    t = best_time(connect, 3)
    assert con.execute('SELECT count(*) FROM "d0000@1"').fetchall() == [(3,)]
    log(f"connect with {datasets} datasets: {t * 1e3:.0f} ms")
    return [result(f"Store.connect() with {datasets} one-version datasets", t * 1e3, None, "ms", "informational")]


def bench_growth(sizes: list[int], root: Path) -> list[dict]:
    rows, per_row = [], {}
    for n in sizes:
        table = make_table(n, seed=n)
        store = Store(root / f"growth-{n}")
        repeat = 3 if n <= 100_000 else 1
        t_commit = best_time(lambda store=store, table=table: store.commit("g", table), repeat)
        t_bare = best_time(lambda n=n, table=table: pq.write_table(table, root / f"g{n}.parquet", compression="zstd"),
                           repeat)
        t_read = best_time(lambda store=store: store.read("g"), repeat)
        per_row[n] = t_commit / n * 1e6
        log(f"growth {n:,}: commit {per_row[n]:.2f} µs/row, read {t_read / n * 1e6:.2f} µs/row")
        rows.append(result(f"commit cost per row @ {n:,} rows", per_row[n], t_bare / n * 1e6, "µs/row",
                           "flat as n grows (linear cost)"))
        rows.append(result(f"read cost per row @ {n:,} rows", t_read / n * 1e6, None, "µs/row", "informational"))
    small, large = sizes[-2], sizes[-1]
    growth = per_row[large] / per_row[small]
    rows.append(result(f"commit per-row cost growth {small:,} → {large:,} rows", growth, None, "×",
                       "≤1.25× (linear)", growth <= 1.25, ratio=growth))
    return rows


PEAK_RSS_SCRIPT = r"""
import random, resource, sys, tempfile
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
sys.path.insert(0, sys.argv[4])
from recon_data.store import Store

mode, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "def", "return", "answer"]
chunks = [" ".join(rng.choices(words, k=170))[:1000] for _ in range(512)]

def batches():
    for start in range(0, n, batch):
        k = min(batch, n - start)
        yield pa.record_batch({
            "id": [f"r{start + i}" for i in range(k)],
            "completion": [chunks[(start + i) * 31 % 512] for i in range(k)],
            "score": pa.array([(start + i) % 97 / 97 for i in range(k)], pa.float64()),
        })

with tempfile.TemporaryDirectory() as tmp:
    if mode == "recon":
        ref = Store(Path(tmp) / "store").commit("big", batches())
        rows = Store(Path(tmp) / "store").manifest(str(ref))["rows"]
    elif mode == "bare":
        writer, rows = None, 0
        for b in batches():
            writer = writer or pq.ParquetWriter(Path(tmp) / "big.parquet", b.schema, compression="zstd")
            writer.write_batch(b)
            rows += b.num_rows
        writer.close()
    else:
        rows = n
    try:  # VmHWM is this process's own peak; ru_maxrss after fork+exec also carries the parent's peak on Linux
        status = Path("/proc/self/status").read_text()
        peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(rows, peak_kib)
"""


def bench_peak_rss(n: int) -> list[dict]:
    peaks = {}
    for mode in ("idle", "bare", "recon"):
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, mode, str(n), "10000", str(REPO)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"peak-RSS subprocess ({mode}) failed: {proc.stderr.strip()[-500:]}")
        rows, kib = map(int, proc.stdout.split())
        assert rows == n, (mode, rows)
        peaks[mode] = kib / 1024
        log(f"peak RSS {mode}: {peaks[mode]:.0f} MB")
    return [
        result(f"peak RSS committing {n:,} rows × ~1 KB streamed (imports alone: {peaks['idle']:.0f} MB)",
               peaks["recon"], peaks["bare"], "MB", "< 1024 MB", peaks["recon"] < 1024),
    ]


def run(quick: bool = False) -> list[dict]:
    n = 100_000 if quick else 1_000_000
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recon-bench-store-") as tmp:
        root = Path(tmp)
        log(f"building a {n:,}-row table")
        table = make_table(n)
        out += bench_write_read(table, root, repeat=4 if quick else 3)
        del table
        out += bench_duckdb(root, repeat=4 if quick else 3)
        out += bench_growth(sizes, root)
        out += bench_connect_many(root, 50 if quick else 200)
    out += bench_peak_rss(n)
    return out


if __name__ == "__main__":
    main(run)
