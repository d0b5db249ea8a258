"""Sampling + scoring throughput through `executors.map_shards`: Ray on 2 local workers vs in-process.

recon    = `map_shards(sample_then_score, rows, executor="ray", num_shards=2)`: two Ray tasks, each loads
           the model in its worker (once: workers and the loaded model are reused), samples its shard into
           its own sampling cache and scores it with a `rule` scorer.
baseline = the same function through `executor="local"` (one shard, this process, all cores).
Both are warmed up first (model loaded, Ray workers started), then timed on fresh caches, so the rows
are generated, not served from a cache. The sharded rows are checked to equal the local rows.
Ray start-up is reported on its own row. On one machine Ray cannot win much: two workers share the
same cores that torch already uses in-process; the point of the number is the overhead.
quick: the tiny random test model; full: the embedded SmolLM2-135M-Instruct.
Usage: .venv/bin/python benchmarks/bench_executor.py [--quick]
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import main, result

from recon_data.executors import map_shards
from recon_data.sample import SamplingParams, sample_rows
from recon_data.sample_cache import canonical_json
from recon_data.score import score_rows

SCORERS = [{"name": "words", "type": "rule", "params": {"metric": "length"}}]
BATCH = 4


def log(msg: str) -> None:
    print(f"  [executor] {msg}", file=sys.stderr, flush=True)


def sample_then_score(shard: list[dict], *, model: str, params: SamplingParams, cache_dir: str) -> list[dict]:
    rows = sample_rows(shard, model=model, params=params, cache_dir=Path(cache_dir), batch_size=BATCH,
                       progress=False)
    return score_rows(rows, SCORERS)


def prompts(k: int, tag: str) -> list[dict]:
    return [{"id": f"{tag}{i}", "gen_messages": [{"role": "user", "content": f"Write one short sentence about "
                                                                            f"topic {tag}{i}."}]}
            for i in range(k)]


def _key(row: dict) -> str:
    return canonical_json(row["gen_messages"])


def run(quick: bool) -> list[dict]:
    import ray
    from ray import cloudpickle

    if quick:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import build_tiny_model

        tmp_model = tempfile.mkdtemp(prefix="bench-executor-model-")
        model = str(build_tiny_model(Path(tmp_model) / "tiny"))
        k, params = 32, SamplingParams(n=2, max_new_tokens=24, seed=0)
    else:
        from recon_data.models import resolve_model

        model = str(resolve_model("embedded").path)
        k, params = 32, SamplingParams(n=2, max_new_tokens=32, seed=0)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import benchmarks/
    work = Path(tempfile.mkdtemp(prefix="bench-executor-"))

    def stage(cache: str):
        return functools.partial(sample_then_score, model=model, params=params, cache_dir=str(work / cache))

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_start = time.perf_counter() - t0
    try:
        opts = {"align": BATCH, "key": _key}
        log("warm-up (model loads, worker start)")
        map_shards(stage("warm-local"), prompts(2 * BATCH, "w"), executor="local", **opts)
        map_shards(stage("warm-ray"), prompts(2 * BATCH, "w"), executor="ray", num_shards=2, **opts)
        rows = prompts(k, "t")
        t0 = time.perf_counter()
        local = map_shards(stage("local"), rows, executor="local", **opts)
        t_local = time.perf_counter() - t0
        log(f"local: {len(local)} rows in {t_local:.1f} s")
        t0 = time.perf_counter()
        sharded = map_shards(stage("ray"), rows, executor="ray", num_shards=2, **opts)
        t_ray = time.perf_counter() - t0
        log(f"ray:   {len(sharded)} rows in {t_ray:.1f} s")
        same = sharded == local
        if not same:
            log("WARNING: ray rows differ from local rows (thread-count dependent numerics?)")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        if quick:
            shutil.rmtree(tmp_model, ignore_errors=True)
    label = "tiny" if quick else "smollm2-135m"
    return [
        result(f"sample+score rows/s, ray 2 workers vs local ({label})", len(sharded) / t_ray,
               len(local) / t_local, "rows/s", ">= 0.7x local on one 2-core machine (overhead only)",
               ok=same and (len(sharded) / t_ray) >= 0.7 * (len(local) / t_local)),
        result("ray.init local cluster start-up", t_start, None, "s", "informational"),
    ]


if __name__ == "__main__":
    main(run)
