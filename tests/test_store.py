"""The store: round trips, atomic commits, integrity checks and DuckDB views."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from recon_data.errors import ReconError
from recon_data.store import Store


def _table(n: int = 5, offset: int = 0) -> pa.Table:
    return pa.table({
        "id": [f"r{i + offset}" for i in range(n)],
        "score.proxy": [float(i) for i in range(n)],
        "gen_messages": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
    })


def test_commit_then_read_returns_identical_table(store_dir):
    store = Store(store_dir)
    table = _table()
    ref = store.commit("demo", table, parents=["x@1"], templates={"a/b/c": "00"})
    assert str(ref) == "demo@1"
    assert store.read("demo").equals(table)
    assert store.read("demo@1").equals(table)
    manifest = store.manifest("demo")
    assert manifest["rows"] == 5 and manifest["parents"] == ["x@1"] and manifest["version"] == 1
    assert [c["name"] for c in manifest["schema"]] == ["id", "score.proxy", "gen_messages"]
    assert len(manifest["files"][0]["sha256"]) == 64


def test_versions_are_numbered_and_immutable(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table(3))
    store.commit("demo", _table(4))
    assert store.versions("demo") == [1, 2]
    assert store.read("demo").num_rows == 4
    assert store.read("demo@1").num_rows == 3


def test_streamed_batches_are_committed_in_parts(store_dir, monkeypatch):
    import recon_data.store as store_mod

    monkeypatch.setattr(store_mod, "PART_ROWS", 10)
    store = Store(store_dir)
    batches = (_table(5, offset=5 * i).to_batches()[0] for i in range(5))
    store.commit("parts", batches)
    assert len(store.files("parts")) == 3
    assert store.read("parts").column("id").to_pylist() == [f"r{i}" for i in range(25)]


def test_empty_data_is_refused_and_leaves_nothing(store_dir):
    store = Store(store_dir)
    with pytest.raises(ReconError, match="0 rows"):
        store.commit("empty", _table(0))
    assert store.names() == []
    assert not [p for p in (store_dir / "datasets" / "empty").iterdir() if p.name.startswith(".tmp")]


def test_missing_dataset_and_version_errors_name_what_exists(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table())
    with pytest.raises(ReconError, match=r"no version 7 \(versions: \[1\]\)"):
        store.read("demo@7")
    with pytest.raises(ReconError, match="datasets: demo"):
        store.read("nope")
    with pytest.raises(ReconError, match="invalid dataset name"):
        store.read("../etc")


def test_verify_detects_a_flipped_byte(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table())
    assert store.verify() == []
    part = store.files("demo")[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    problems = store.verify("demo")
    assert problems == ["demo@1: checksum mismatch in part-00000.parquet (file changed or corrupt)"]


def test_truncated_manifest_is_reported_not_crashed(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table())
    manifest = store.version_dir("demo") / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert "manifest.json is corrupt" in store.verify()[0]
    with pytest.raises(ReconError, match="manifest.json is corrupt"):
        store.read("demo")


def test_duckdb_views_for_latest_and_pinned_versions(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table(3))
    store.commit("demo", _table(7))
    con = store.connect()
    assert con.execute('select count(*) from "demo"').fetchall() == [(7,)]
    assert con.execute('select count(*) from "demo@1"').fetchall() == [(3,)]
    assert con.execute('select max("score.proxy") from "demo@2"').fetchall() == [(6.0,)]
    with pytest.raises(ReconError, match="SQL error"):
        store.sql("select * from missing_table")


def test_hf_and_polars_loading_match_the_arrow_table(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table())
    assert store.to_hf("demo").to_list() == _table().to_pylist()
    assert store.to_polars("demo").to_dicts() == _table().to_pylist()


def test_diff_counts_rows_only_in_each_version(store_dir):
    store = Store(store_dir)
    store.commit("demo", pa.table({"id": ["a", "b", "c", "d"], "v": [1, 2, 3, 4]}))
    store.commit("demo", pa.table({"id": ["c", "d", "e"], "v": [3, 4, 5], "new": [0, 0, 0]}))
    d = store.diff("demo@1", "demo@2")
    assert (d["rows_only_in_a"], d["rows_only_in_b"]) == (2, 1)
    assert d["columns_only_in_b"] == ["new"]


WRITER = textwrap.dedent("""
    import sys, time, pyarrow as pa
    from recon_data.store import Store
    def batches():
        for i in range(10_000):
            if i == 3:
                print("writing", flush=True)
            yield pa.table({"x": list(range(1000))}).to_batches()[0]
            time.sleep(0.01)
    Store(sys.argv[1]).commit("killed", batches())
""")


def test_a_commit_killed_midway_leaves_no_visible_version(store_dir):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(store_dir)
    assert store.versions("killed") == []
    assert store.verify() == []
    assert store.connect().execute("select count(*) from information_schema.tables").fetchall() == [(0,)]
    ref = store.commit("killed", _table())
    assert ref.version == 1
    # the killed writer's temp folder is reclaimed by the next commit
    assert not list((store_dir / "datasets" / "killed").glob(".tmp-*"))


CONCURRENT = textwrap.dedent("""
    import sys, pyarrow as pa
    from recon_data.store import Store
    Store(sys.argv[1]).commit("shared", pa.table({"who": [sys.argv[2]] * 50_000}))
""")


def test_concurrent_commits_get_distinct_intact_versions(store_dir):
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(store_dir), w]) for w in "ab"]
    assert [p.wait() for p in procs] == [0, 0]
    store = Store(store_dir)
    assert store.versions("shared") == [1, 2]
    assert store.verify() == []
    assert {store.read(f"shared@{v}").column("who")[0].as_py() for v in (1, 2)} == {"a", "b"}
    assert json.loads((store.version_dir("shared@2") / "manifest.json").read_text())["version"] == 2


def test_unwritable_store_fails_clearly_and_publishes_nothing(store_dir):
    store_dir.parent.mkdir(exist_ok=True)
    store_dir.write_text("not a directory")  # works as root too, unlike chmod
    with pytest.raises(ReconError, match="cannot write to store"):
        Store(store_dir).commit("x", _table())
    assert Store(store_dir).names() == []


def test_store_root_path_objects(tmp_path):
    assert Store(Path(tmp_path)).names() == []


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_reading_a_version_with_a_flipped_byte_fails_naming_version_and_file(store_dir):
    store = Store(store_dir)
    store.commit("demo", _table(50))
    _flip(store.files("demo")[0])
    expected = r"demo@1: checksum mismatch in part-00000\.parquet .*recon datasets verify"
    for read in (store.read, store.to_polars, store.to_hf, lambda ref: list(store.iter_batches(ref))):
        with pytest.raises(ReconError, match=expected):
            read("demo")
    try:  # `check=False` skips the hash: the damage surfaces only if Parquet itself notices it
        store.read("demo", check=False)
    except ReconError as err:
        assert "checksum" not in str(err)


def test_one_damaged_version_leaves_the_others_queryable_and_is_named_in_sql_errors(store_dir):
    store = Store(store_dir)
    store.commit("good", _table(4))
    store.commit("cut", _table(4))
    store.commit("cut", _table(6))
    store.commit("trunc", _table(2))
    part = store.files("cut@2")[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    manifest = store.version_dir("trunc") / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert store.sql('select count(*) as n from "good"').to_pylist() == [{"n": 4}]
    assert store.sql('select count(*) as n from "cut@1"').to_pylist() == [{"n": 4}]
    assert [d.split(" ")[0] for d in store.damaged] == ["cut@2", "trunc@1"]
    with pytest.raises(ReconError, match=r"skipped damaged versions: cut@2 \(.*\); trunc@1 .*recon datasets verify"):
        store.sql('select * from "cut"')  # the latest is damaged: no silent fallback to cut@1
    with pytest.raises(ReconError, match="cut@2"):
        store.sql('select * from "cut@2"')
