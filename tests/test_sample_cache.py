"""The SQLite sample cache: key stability, first-write-wins, accounting, WAL, corrupt files."""

from __future__ import annotations

import sqlite3

import pytest

from recon_data.errors import ReconError
from recon_data.sample_cache import CachedSample, SampleCache, sample_key

BASE = dict(
    model_id="m",
    model_revision="r1",
    backend={"name": "transformers", "dtype": "float32"},
    messages=[{"role": "user", "content": "héllo"}],
    params={"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8},
    seed=0,
    sample_index=0,
)


def test_sample_key_is_stable_and_ignores_dict_order_and_extra_message_fields():
    k = sample_key(**BASE)
    assert k == sample_key(
        **{
            **BASE,
            "messages": [{"content": "héllo", "role": "user", "name": "x"}],
            "params": dict(reversed(list(BASE["params"].items()))),
        }
    )
    assert len(k) == 64 and int(k, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"model_id": "m2"},
        {"model_revision": "r2"},
        {"backend": {"name": "transformers", "dtype": "bfloat16"}},
        {"messages": [{"role": "user", "content": "hello"}]},
        {"messages": [{"role": "system", "content": "héllo"}]},
        {"params": {**BASE["params"], "temperature": 0.7}},
        {"params": {**BASE["params"], "n": 3}},
        {"seed": 1},
        {"sample_index": 1},
    ],
)
def test_sample_key_changes_with_every_field_that_shapes_a_sample(change):
    assert sample_key(**{**BASE, **change}) != sample_key(**BASE)


def test_put_get_roundtrip_counts_hits_and_misses_and_first_write_wins(tmp_path):
    with SampleCache(tmp_path / "c") as cache:
        assert cache.get_many(["a", "b"]) == {}
        assert (cache.hits, cache.misses) == (0, 2)
        first = CachedSample("one ✓", 5, 3, "stop")
        assert cache.put_many({"a": first}, model_id="m", backend="transformers") == 1
        assert (
            cache.put_many(
                {"a": CachedSample("other", 1, 1, "length"), "b": CachedSample("", None, None, "unknown")},
                model_id="m",
                backend="openai",
            )
            == 1
        )
        got = cache.get_many(["a", "b", "c", "a"])
        assert got == {"a": first, "b": CachedSample("", None, None, "unknown")}
        st = cache.stats()
        assert (st.hits, st.misses, st.entries) == (2, 3, 2) and st.bytes > 0
        assert sorted(cache.by_model()) == [("m", "openai", 1), ("m", "transformers", 1)]
    with SampleCache(tmp_path / "c") as again:  # durable across handles
        assert again.get_many(["a"])["a"] == first


def test_lookups_of_more_keys_than_sqlite_parameters_allow(tmp_path):
    with SampleCache(tmp_path) as cache:
        cache.put_many(
            {f"k{i}": CachedSample(str(i), 1, 1, "stop") for i in range(1200)}, model_id="m", backend="b"
        )
        got = cache.get_many(f"k{i}" for i in range(0, 1300))
        assert len(got) == 1200 and got["k999"].completion == "999"


def test_cache_uses_wal_and_two_handles_see_each_others_commits(tmp_path):
    a, b = SampleCache(tmp_path), SampleCache(tmp_path)
    try:
        assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        a.put_many({"x": CachedSample("x", 1, 1, "stop")}, model_id="m", backend="b")
        assert "x" in b.get_many(["x"])
    finally:
        a.close()
        b.close()


def test_a_corrupt_cache_file_is_a_one_line_recon_error(tmp_path):
    (tmp_path / "samples.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReconError, match="unreadable.*delete it"):
        SampleCache(tmp_path)


def test_a_cache_from_another_schema_version_is_refused(tmp_path):
    SampleCache(tmp_path).close()
    con = sqlite3.connect(tmp_path / "samples.sqlite")
    con.execute("UPDATE meta SET v='99' WHERE k='schema'")
    con.commit()
    con.close()
    with pytest.raises(ReconError, match="schema 99"):
        SampleCache(tmp_path)


def test_an_unwritable_cache_dir_is_a_recon_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReconError, match="cannot create sampling cache dir"):
        SampleCache(tmp_path / "file" / "cache")


def _open_and_close(args):
    path, barrier = args
    from recon_data.sample_cache import SampleCache

    barrier.wait()
    SampleCache(path).close()
    return True


def test_many_processes_opening_one_fresh_cache_at_once_all_succeed(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(5):  # the race needs a brand-new file each time
        path = tmp_path / f"c{trial}"
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_and_close, args=((path, barrier),)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 8
