"""SIGKILL `recon run` at random moments, rerun it, and demand the uninterrupted run's exact result.

Kill times are stratified over the reference run's working span (first line → exit) and drawn from a
fixed seed, so the trials land in sampling, scoring, committing and training and are reproducible.
`RECON_KILL_TRIALS` lowers the trial count for a quick run (default 10).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import time

import pytest

from recon_data.store import Store

from ._util import (
    Watched,
    cache_entries,
    describe,
    generated_counts,
    half_written,
    recon,
    snapshot,
    stale_temp_dirs,
)
from .conftest import FIRST_LINE, RUN_NAME

pytestmark = pytest.mark.reliability

TRIALS = int(os.environ.get("RECON_KILL_TRIALS", "10"))
SEED = 20240611


def _kill_at(pipeline, store, delay: float) -> tuple[str, bool, float]:
    """Start a run, SIGKILL it `delay` s after its first line.

    Returns where it was, whether it was killed, and (if it finished first) its work time."""
    run = Watched("run", pipeline, "--store", store, "--no-progress")
    first = run.wait_for(FIRST_LINE)
    if first is not None:
        while run.proc.poll() is None and time.monotonic() < first + delay:
            time.sleep(0.01)
    killed = run.proc.poll() is None
    if killed:
        os.kill(run.proc.pid, signal.SIGKILL)
    run.finish()
    return run.last_step_line(), killed, time.monotonic() - (first or run.started)


def test_sigkill_anywhere_then_rerun_equals_uninterrupted_run_and_reuses_cached_work(reference_run, tmp_path):
    ref = reference_run
    rng = random.Random(SEED)
    report = []
    # The machine's speed drifts (shared cores), so the run's length is re-estimated after every trial:
    # the median of the reference's work time and each trial's (kill delay + rerun time).
    totals = [ref.work_seconds]
    for trial in range(TRIALS):
        store = tmp_path / f"store-B{trial}"
        fraction = (trial + rng.random()) / TRIALS
        span = statistics.median(totals)
        delay = span * fraction
        where, killed, took = _kill_at(ref.pipeline, store, delay)
        if not killed:  # the run finished before the kill: rescale to its length and retry once
            span = took
            totals.append(took)
            shutil.rmtree(store)
            delay = span * fraction * 0.95
            where, killed, took = _kill_at(ref.pipeline, store, delay)
        report.append(
            f"trial {trial}: kill at +{delay:5.1f} s {'' if killed else '(run had finished) '}after: {where}"
        )

        # nothing half-written is visible after the kill
        assert half_written(store) == [], report[-1]
        assert Store(store).verify() == [], report[-1]
        before = cache_entries(store)
        published = {n: Store(store).versions(n) for n in Store(store).names()}
        manifests = {n: Store(store).manifest(n) for n in published}
        models = {
            p: (p / "recon_model.json").stat().st_mtime_ns
            for p in (store / "runs" / RUN_NAME / "models").glob("*")
            if (p / "recon_model.json").exists()
        }

        # the rerun (progress on: it prints what sampling generated vs took from the cache)
        started = time.monotonic()
        done = recon("run", ref.pipeline, "--store", store)
        totals.append(delay + time.monotonic() - started)
        assert done.returncode == 0, report[-1] + "\n" + describe(done)
        assert "Traceback" not in done.stderr
        counts = generated_counts(done.stderr)
        generated = sum(g for g, _ in counts)
        assert generated == ref.cache_entries - before, (
            f"{report[-1]}: the rerun generated {generated} samples but only "
            f"{ref.cache_entries - before} were "
            f"missing from the cache ({counts})"
        )
        assert "regenerated-but-cached" not in done.stderr, report[-1]
        assert cache_entries(store) == ref.cache_entries

        # what was finished before the kill was kept as it was, not redone
        for name, versions in published.items():
            assert Store(store).versions(name)[: len(versions)] == versions
            assert Store(store).manifest(f"{name}@{versions[-1]}") == manifests[name], name
        for folder, mtime in models.items():
            assert (folder / "recon_model.json").stat().st_mtime_ns == mtime, f"{folder} was retrained"

        # and the end result is the uninterrupted run's
        snap = snapshot(store, RUN_NAME)
        assert set(snap.datasets) == set(ref.snapshot.datasets), report[-1]
        for name, (rows, manifest) in ref.snapshot.datasets.items():
            assert snap.datasets[name][0] == rows, f"{report[-1]}: rows of {name} differ from the reference"
            assert snap.datasets[name][1] == manifest, f"{report[-1]}: manifest of {name} differs"
        assert snap.models == ref.snapshot.models, f"{report[-1]}: trained model revisions differ"
        assert not snap.divergent, f"{report[-1]}: older versions with other content: {snap.divergent}"
        assert half_written(store) == [] and Store(store).verify() == []
        if snap.duplicate_versions:
            report[-1] += f"; identical re-commits: {snap.duplicate_versions}"
        if stale := stale_temp_dirs(store):
            report[-1] += f"; {len(stale)} stale .tmp-* dir(s) left in datasets/"
    estimates = [round(t, 1) for t in totals]
    head = f"reference run: {ref.work_seconds:.1f} s of work; length estimates {estimates}"
    print("\n".join(["", head, *report]))
