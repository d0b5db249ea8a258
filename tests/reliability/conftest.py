"""Fixtures of the reliability suite: one uninterrupted reference run (shared by the kill and the race
tests) and mounts for full / read-only filesystems (root only; skipped with the reason otherwise)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._util import Snapshot, Watched, cache_entries, half_written, snapshot, tiny_pipeline, write_yaml

RUN_NAME = "rel"
FIRST_LINE = "records, arms"  # Runner.run's first line: imports and config loading are done


@dataclass(frozen=True)
class Reference:
    pipeline: Path
    store: Path
    snapshot: Snapshot
    cache_entries: int
    work_seconds: float  # from the run's first line to its exit


@pytest.fixture(scope="session")
def reference_run(tiny_model_dir, tmp_path_factory) -> Reference:
    """`recon run` of a 2-arm × 2-round tiny pipeline, uninterrupted, into a fresh store."""
    base = tmp_path_factory.mktemp("reference")
    pipeline = write_yaml(base / "rel.yaml", tiny_pipeline(tiny_model_dir, name=RUN_NAME, rounds=2))
    store = base / "store-A"
    run = Watched("run", pipeline, "--store", store, "--no-progress")
    first = run.wait_for(FIRST_LINE)
    rc = run.finish()
    assert rc == 0, run.stderr[-3000:]
    assert first is not None
    work = time.monotonic() - first
    assert half_written(store) == []
    snap = snapshot(store, RUN_NAME)
    assert snap.datasets and snap.models
    assert all(len(revs) == 1 for revs in snap.models.values())
    return Reference(pipeline, store, snap, cache_entries(store), work)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture()
def tmpfs(tmp_path):
    """`tmpfs(size)` mounts a fresh tmpfs of that size ("2m") and returns its path; unmounted afterwards."""
    mounted: list[Path] = []

    def make(size: str, name: str = "tmpfs") -> Path:
        path = tmp_path / name
        path.mkdir()
        done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def read_only_view(tmp_path):
    """`read_only_view(src)` bind-mounts `src` read-only (root ignores chmod, a ro mount binds it too)."""
    mounted: list[Path] = []

    def make(src: Path) -> Path:
        path = tmp_path / f"ro-{src.name}"
        path.mkdir()
        done = _mount("--bind", str(src), str(path))
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(path)
        ro = _mount("-o", "remount,ro,bind", str(path))
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {ro.stderr.strip()}")
        probe = path / ".write-probe"
        try:
            probe.touch()
        except OSError:
            return path
        probe.unlink()
        pytest.skip("the read-only bind mount still accepts writes on this kernel")

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
