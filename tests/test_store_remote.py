"""The store on object storage: a real S3-compatible server (moto) on 127.0.0.1, s3fs, real Parquet.

Pins: round trips, listing only published versions, conditional version claims under concurrent
writers, a reader racing a writer never seeing a partial version, remote re-hashing, DuckDB reading
in place, and that credentials never reach the bucket's manifests.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from recon_data.errors import ReconError
from recon_data.store import Store

pytest.importorskip("s3fs", reason="s3fs not installed: pip install -c constraints.txt s3fs")
moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed: pip install 'moto[server]'")

KEY, SECRET = "recon-test-key", "recon-test-secret-d0n7-l34k"


@pytest.fixture(scope="module")
def endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(endpoint, monkeypatch, tmp_path):
    """A fresh bucket; storage options via $RECON_STORAGE_OPTIONS, credentials via the AWS env vars."""
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:12]}"
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "RECON_STORAGE_OPTIONS": json.dumps({"endpoint_url": endpoint}),
           "RECON_WORKDIR": str(tmp_path / "work")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {"url": f"s3://{bucket}/stores/main", "bucket": bucket, "env": {**os.environ, **env}}


def _table(n: int = 5, offset: int = 0) -> pa.Table:
    return pa.table({
        "id": [f"r{i + offset}" for i in range(n)],
        "score.proxy": [float(i) for i in range(n)],
        "gen_messages": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
    })


def test_remote_commit_then_read_returns_identical_table(s3, tmp_path):
    store = Store(s3["url"])
    assert store.is_remote and store.root == tmp_path / "work"
    ref = store.commit("demo", _table(), parents=["x@1"], templates={"a/b/c": "00"})
    assert str(ref) == "demo@1" and ref.path == s3["url"] + "/datasets/demo/v1"
    other = Store(s3["url"])  # a second client sees the same store
    assert other.read("demo").equals(_table())
    manifest = other.manifest("demo@1")
    assert manifest["rows"] == 5 and manifest["parents"] == ["x@1"] and manifest["version"] == 1
    assert other.files("demo") == [s3["url"] + "/datasets/demo/v1/part-00000.parquet"]
    assert [b.num_rows for b in other.iter_batches("demo", batch_size=2)] == [2, 2, 1]
    assert other.names() == ["demo"]


def test_remote_versions_are_numbered_and_listed(s3):
    store = Store(s3["url"])
    store.commit("demo", _table(3))
    store.commit("demo", _table(4))
    store.commit("other", _table(1))
    assert store.versions("demo") == [1, 2] and store.names() == ["demo", "other"]
    assert store.read("demo").num_rows == 4 and store.read("demo@1").num_rows == 3
    with pytest.raises(ReconError, match=r"no version 9 \(versions: \[1, 2\]\)"):
        store.read("demo@9")
    with pytest.raises(ReconError, match="datasets: demo, other"):
        store.read("missing")


def test_remote_parts_are_streamed_in_parts(s3, monkeypatch):
    import recon_data.store as store_mod

    monkeypatch.setattr(store_mod, "PART_ROWS", 10)
    store = Store(s3["url"])
    store.commit("parts", (_table(5, offset=5 * i).to_batches()[0] for i in range(5)))
    assert len(store.files("parts")) == 3
    assert store.read("parts").column("id").to_pylist() == [f"r{i}" for i in range(25)]
    assert store.verify() == []


def test_remote_verify_rehashes_and_detects_a_flipped_byte(s3):
    store = Store(s3["url"])
    store.commit("demo", _table())
    assert store.verify() == []
    part = store.files("demo")[0]
    data = bytearray(store.fs.cat_file(part))
    data[len(data) // 2] ^= 0xFF
    store.fs.pipe_file(part, bytes(data))
    assert store.verify("demo") == ["demo@1: checksum mismatch in part-00000.parquet (file changed or corrupt)"]
    store.fs.pipe_file(s3["url"] + "/datasets/demo/v1/stray.bin", b"x")
    assert "demo@1: unexpected file stray.bin" in store.verify()


def test_remote_missing_part_is_reported_and_local_copies_are_checked(s3):
    store = Store(s3["url"])
    store.commit("demo", _table())
    store.commit("demo", _table(2))
    store.fs.rm_file(store.files("demo@1")[0])
    assert store.verify() == ["demo@1: missing file part-00000.parquet"]
    with pytest.raises(ReconError, match="cannot read Parquet"):
        store.read("demo@1")
    with pytest.raises(ReconError, match="missing file"):
        store.to_hf("demo@1")


def test_remote_duckdb_views_read_parquet_in_place(s3):
    store = Store(s3["url"])
    store.commit("demo", _table(3))
    store.commit("demo", _table(7))
    con = store.connect()
    assert con.execute('select count(*) from "demo"').fetchall() == [(7,)]
    assert con.execute('select count(*) from "demo@1"').fetchall() == [(3,)]
    assert con.execute('select max("score.proxy") from "demo@2"').fetchall() == [(6.0,)]
    assert store.sql('select id from "demo@1" order by id').column("id").to_pylist() == ["r0", "r1", "r2"]
    d = store.diff("demo@1", "demo@2")
    assert (d["rows_only_in_a"], d["rows_only_in_b"]) == (0, 4)
    with pytest.raises(ReconError, match="SQL error"):
        store.sql("select * from missing_table")


def test_remote_hf_and_polars_loading_match_the_arrow_table(s3, tmp_path):
    store = Store(s3["url"])
    store.commit("demo", _table())
    assert store.to_hf("demo").to_list() == _table().to_pylist()
    assert store.to_polars("demo").to_dicts() == _table().to_pylist()
    cached = list((tmp_path / "work" / "cache" / "parts").glob("*.parquet"))
    assert [p.stem for p in cached] == [store.manifest("demo")["files"][0]["sha256"]]


def test_credentials_never_reach_the_bucket(s3):
    store = Store(s3["url"])
    store.commit("demo", _table(), pipeline={"store": s3["url"]})
    blobs = b"".join(store.fs.cat_file(p) for p in store.fs.find(s3["bucket"]))
    assert SECRET.encode() not in blobs and KEY.encode() not in blobs
    assert "endpoint_url" not in json.dumps(store.manifest("demo"))


def test_a_url_squashed_by_pathlib_still_names_the_remote_store(s3):
    Store(s3["url"]).commit("demo", _table())
    squashed = Store(Path(s3["url"]))  # typer Path options turn s3://b/p into s3:/b/p
    assert squashed.is_remote and squashed.url == s3["url"] and squashed.versions("demo") == [1]


def test_empty_remote_commit_is_refused_and_leaves_no_objects(s3):
    store = Store(s3["url"])
    with pytest.raises(ReconError, match="0 rows"):
        store.commit("empty", _table(0))
    assert store.names() == [] and store.fs.find(s3["url"] + "/datasets") == []
    assert store.commit("empty", _table()).version == 1  # the released number is reused


def test_hostile_manifest_paths_are_refused(s3):
    store = Store(s3["url"])
    store.commit("demo", _table())
    mpath = s3["url"] + "/datasets/demo/v1/manifest.json"
    manifest = json.loads(store.fs.cat_file(mpath))
    manifest["files"][0]["path"] = "../../../secrets.parquet"
    store.fs.pipe_file(mpath, json.dumps(manifest).encode())
    with pytest.raises(ReconError, match="bad file entry"):
        store.read("demo")
    assert "bad file entry" in store.verify()[0]


def test_bad_storage_options_env_is_a_one_line_error(s3, monkeypatch):
    monkeypatch.setenv("RECON_STORAGE_OPTIONS", "{not json")
    with pytest.raises(ReconError, match="RECON_STORAGE_OPTIONS is not valid JSON"):
        Store(s3["url"])


def test_a_claimed_but_unpublished_version_is_invisible_and_skipped(s3):
    store = Store(s3["url"])
    store.fs.pipe_file(s3["url"] + "/datasets/demo/v1/_CLAIM", b"{}")
    store.fs.pipe_file(s3["url"] + "/datasets/demo/v1/part-00000.parquet", b"half a file")
    assert store.versions("demo") == [] and store.names() == []
    assert store.commit("demo", _table()).version == 2
    assert store.versions("demo") == [2] and store.verify() == []


WRITER = textwrap.dedent("""
    import sys, time, pyarrow as pa
    from recon_data.store import Store
    import recon_data.store as m
    m.PART_ROWS = 1000
    def batches():
        for i in range(10_000):
            if i == 3:
                print("writing", flush=True)
            yield pa.table({"x": list(range(1000))}).to_batches()[0]
            time.sleep(0.01)
    Store(sys.argv[1]).commit("killed", batches())
""")


def test_a_remote_commit_killed_midway_leaves_no_visible_version(s3):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, s3["url"]], stdout=subprocess.PIPE, text=True,
                            env=s3["env"])
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(s3["url"])
    assert store.fs.find(s3["url"] + "/datasets/killed/v1")  # parts were uploaded ...
    assert store.versions("killed") == [] and store.verify() == []  # ... but nothing is visible
    assert store.connect().execute("select count(*) from information_schema.tables").fetchall() == [(0,)]
    assert store.commit("killed", _table()).version == 2


def test_simultaneous_claims_get_distinct_version_numbers(s3):
    """All claimers list an empty dataset at once and try v1: the conditional create must split them."""
    barrier = threading.Barrier(6)

    def claim(_: int) -> int:
        store = Store(s3["url"])
        barrier.wait()
        return store._claim("x")

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(claim, range(6)))
    assert sorted(got) == [1, 2, 3, 4, 5, 6]


CONCURRENT = textwrap.dedent("""
    import sys, pyarrow as pa
    from recon_data.store import Store
    store = Store(sys.argv[1])
    for i in range(int(sys.argv[3])):
        store.commit("shared", pa.table({"who": [f"{sys.argv[2]}{i}"] * 2000}))
""")


def test_concurrent_remote_writers_never_claim_the_same_version(s3):
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, s3["url"], w, "4"], env=s3["env"])
             for w in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = Store(s3["url"])
    assert store.versions("shared") == list(range(1, 9))
    assert store.verify() == []
    whos = [store.read(f"shared@{v}").column("who").unique().to_pylist() for v in range(1, 9)]
    assert all(len(w) == 1 for w in whos)
    assert sorted(w[0] for w in whos) == [f"{w}{i}" for w in "ab" for i in range(4)]
    assert all(store.manifest(f"shared@{v}")["version"] == v for v in range(1, 9))


READER = textwrap.dedent("""
    import json, sys, time
    from recon_data.store import Store
    store = Store(sys.argv[1])
    seen, checks, deadline = set(), 0, time.time() + 90
    while time.time() < deadline:
        versions = store.versions("race")
        if versions:
            v = versions[-1]
            m = store.manifest(f"race@{v}")
            t = store.read(f"race@{v}")
            tags = set(t.column("tag").to_pylist())
            assert t.num_rows == m["rows"] == 3000 * v, (v, t.num_rows, m["rows"])
            assert tags == {f"v{v}"}, (v, tags)
            assert store.verify("race") == [], store.verify("race")
            seen.add(v)
            checks += 1
            if v == int(sys.argv[2]):
                break
    print(json.dumps({"seen": sorted(seen), "checks": checks}))
""")


def test_a_reader_racing_a_writer_never_sees_a_partial_version(s3, monkeypatch):
    import recon_data.store as store_mod

    monkeypatch.setattr(store_mod, "PART_ROWS", 1000)  # several parts per version
    n = 8
    reader = subprocess.Popen([sys.executable, "-c", READER, s3["url"], str(n)], stdout=subprocess.PIPE,
                              text=True, env=s3["env"])
    store = Store(s3["url"])
    for v in range(1, n + 1):
        rows = 3000 * v
        store.commit("race", (pa.table({"tag": [f"v{v}"] * 1000}).to_batches()[0] for _ in range(rows // 1000)))
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0
    result = json.loads(out)
    assert result["seen"][-1] == n and result["checks"] >= 1
