"""A store on a full disk or a read-only filesystem: one clear error line, exit != 0, no partial version,
the store still verifies; reading a read-only store still works. Needs root for `mount` (else skipped)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from recon_data.store import Store

from ._util import (
    assert_clean_failure,
    cache_entries,
    generated_counts,
    half_written,
    recon,
    tiny_pipeline,
    write_yaml,
)

pytestmark = pytest.mark.reliability


def _user_pipeline(tmp_path: Path, model: Path, *, blob_bytes: int) -> Path:
    """A 1-round pipeline over a user JSONL whose records carry an incompressible `blob` input field."""
    tpl = tmp_path / "tpl" / "custom" / "custom"
    tpl.mkdir(parents=True)
    (tpl / "q.jinja").write_text("{% block user %}{{ q }}{% endblock %}\n")
    data = tmp_path / "data.jsonl"
    rng = __import__("random").Random(7)
    with open(data, "w") as f:
        for i in range(4):
            blob = base64.b64encode(rng.randbytes(blob_bytes)).decode()
            f.write(json.dumps({"q": f"question {i}", "blob": blob}) + "\n")
    cfg = tiny_pipeline(
        model,
        name="disk",
        rounds=1,
        eval=None,
        filters=[],
        suite={"path": str(data), "mapping": {"input": {"q": "q", "blob": "blob"}}, "split": None},
        templates_dirs=[str(tmp_path / "tpl")],
        arms={"standard": {"generate": "custom/custom/q", "train": "custom/custom/q"}},
        scorers=[{"name": "len", "type": "rule", "params": {"metric": "length"}}],
        train={"lora": None, "epochs": 1, "batch_size": 2, "max_length": 256},
    )
    return write_yaml(tmp_path / "disk.yaml", cfg)


def test_commit_that_does_not_fit_fails_with_one_line_and_publishes_nothing(tmpfs, tiny_model_dir, tmp_path):
    mnt = tmpfs("2m")
    pipeline = _user_pipeline(tmp_path, tiny_model_dir, blob_bytes=600_000)  # 4 × 800 KB base64 > 2 MB
    store = mnt / "store"
    done = recon("run", pipeline, "--store", store, "--no-progress")
    line = assert_clean_failure(
        done, code=1, contains=["disk-standard-s0-r1", "no space left"], sole_line=False
    )
    assert "nothing was published" in line
    assert half_written(store) == [] and Store(store).verify() == []
    assert Store(store).names() == []
    assert not list((store / "datasets").glob("*/.tmp-*")), "the failed commit left its temp folder behind"
    ok = recon("datasets", "verify", "--store", store)
    assert ok.returncode == 0, ok.stderr

    # the samples drawn before the failure are kept: on a disk with room the rerun generates nothing
    roomy = tmp_path / "roomy"
    shutil.copytree(store, roomy)
    entries = cache_entries(roomy)
    assert entries == 8
    again = recon("run", pipeline, "--store", roomy)
    assert again.returncode == 0, again.stderr[-3000:]
    assert generated_counts(again.stderr) == [(0, entries)]
    assert Store(roomy).verify() == [] and "disk-standard-s0-r1" in Store(roomy).names()


def test_run_on_an_already_full_disk_fails_with_one_line_naming_the_problem(tmpfs, tiny_model_dir, tmp_path):
    mnt = tmpfs("2m")
    pipeline = _user_pipeline(tmp_path, tiny_model_dir, blob_bytes=1000)
    fd = os.open(mnt / "ballast", os.O_WRONLY | os.O_CREAT)
    try:  # fill the filesystem to the last byte
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    store = mnt / "store"
    done = recon("run", pipeline, "--store", store, "--no-progress")
    line = assert_clean_failure(done, code=1, sole_line=False)
    assert "full" in line or "no space" in line.lower(), f"the error does not say the disk is full: {line}"
    assert half_written(store) == []
    if store.exists():
        assert Store(store).verify() == [] and Store(store).names() == []


@pytest.fixture()
def small_store(tmp_path) -> Path:
    root = tmp_path / "src-store"
    store = Store(root)
    store.commit("good", pa.table({"id": ["a", "b", "c"], "x": [1, 2, 3]}))
    store.commit("good", pa.table({"id": ["d"], "x": [4]}))
    return root


def test_read_only_store_can_be_read_verified_and_queried(read_only_view, small_store):
    ro = read_only_view(small_store)
    verify = recon("datasets", "verify", "--store", ro)
    assert verify.returncode == 0 and "2 version(s)" in verify.stdout, verify.stderr
    query = recon("sql", 'select count(*) as n from "good@1"', "--store", ro, "--format", "json")
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout) == [{"n": 3}]
    show = recon("datasets", "show", "good", "--store", ro)
    assert show.returncode == 0 and "Traceback" not in show.stderr, show.stderr


def test_run_into_a_read_only_store_fails_with_one_line_and_changes_nothing(
    read_only_view, small_store, tiny_model_dir, tmp_path
):
    ro = read_only_view(small_store)
    before = sorted(str(p.relative_to(small_store)) for p in small_store.rglob("*"))
    pipeline = write_yaml(tmp_path / "ro.yaml", tiny_pipeline(tiny_model_dir, name="ro", rounds=1, eval=None))
    done = recon("run", pipeline, "--store", ro, "--no-progress")
    assert_clean_failure(done, code=1, contains=[str(ro)], sole_line=False)
    assert "read-only" in done.stderr.lower(), done.stderr
    assert sorted(str(p.relative_to(small_store)) for p in small_store.rglob("*")) == before
    assert Store(small_store).verify() == []


def test_read_only_mount_really_refuses_writes(read_only_view, small_store):
    """Guards the two tests above: as root, chmod would not have stopped a write, the mount must."""
    ro = read_only_view(small_store)
    with pytest.raises(OSError):
        (ro / "datasets" / "x").mkdir()
    assert os.access(small_store, os.W_OK)
