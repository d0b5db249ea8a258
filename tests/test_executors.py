"""map_shards: shard planning, local vs Ray execution, retries of a killed worker, exact sampling parity.

Ray runs for real (a local 2-CPU Ray started once for this module, ~10 s); the sampler runs the tiny
real model. Results are compared as sorted content hashes of whole rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import pytest

from recon_data.errors import ConfigError, ReconError
from recon_data.executors import map_shards, plan_shards
from recon_data.sample import SamplingParams, sample_rows
from recon_data.sample_cache import canonical_json


def _row_hashes(rows: list[dict]) -> list[str]:
    return sorted(hashlib.sha256(json.dumps(r, sort_keys=True, default=str).encode()).hexdigest() for r in rows)


def _double(shard: list[int]) -> list[int]:
    return [x * 2 for x in shard]


def _prompt_rows(k: int) -> list[dict]:
    return [{"id": f"p{i}", "gen_messages": [{"role": "user", "content": f"write item {i} about tests"}]}
            for i in range(k)]


# ---- planning ----------------------------------------------------------------------------------
def test_plan_covers_every_item_once_in_order_and_evenly():
    shards = plan_shards(list(range(10)), 3)
    assert shards == [(0, 3), (3, 7), (7, 10)]
    assert plan_shards([], 4) == [] and plan_shards([1], 4) == [(0, 1)]
    assert plan_shards(list(range(3)), 10) == [(0, 1), (1, 2), (2, 3)]


def test_plan_cuts_only_at_multiples_of_align_distinct_keys():
    items = ["a", "b", "b", "c", "d", "e", "f", "g", "h"]  # distinct: a b c d e f g h
    shards = plan_shards(items, 2, align=4, key=lambda x: x)
    assert shards == [(0, 5), (5, 9)]  # the cut after 4 distinct keys (a, b, c, d), duplicates kept together
    assert plan_shards(items, 4, align=8, key=lambda x: x) == [(0, 9)]  # no allowed cut: one shard


def test_plan_never_splits_a_key_across_shards():
    items = ["a", "b", "c", "a", "d", "e", "f", "g"]  # "a" recurs at 3: no cut before 4
    for a, b in plan_shards(items, 4, key=lambda x: x):
        assert a == 0 or a >= 4
        assert set(items[a:b]).isdisjoint(items[:a])


def test_local_executor_returns_results_in_input_order():
    assert map_shards(_double, range(11), num_shards=4) == [x * 2 for x in range(11)]
    assert map_shards(_double, [], executor="local") == []


def test_bad_executor_settings_are_config_errors():
    with pytest.raises(ConfigError, match="executor 'spark' is unknown"):
        map_shards(_double, [1], executor="spark")
    with pytest.raises(ConfigError, match="num_shards must be an integer >= 1"):
        map_shards(_double, [1], num_shards=0)
    with pytest.raises(ReconError, match="returned int, not a list"):
        map_shards(lambda shard: len(shard), [1, 2])


# ---- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray not installed: pip install -c constraints.txt 'ray[data]'")
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _die_once(marker_dir: str, victim: int, shard: list[int]) -> list[int]:
    """Kills its worker process the first time it sees `victim` (a marker file says it happened)."""
    marker = Path(marker_dir) / "died"
    if victim in shard and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return [x * 2 for x in shard]


def _fail(shard: list[int]) -> list[int]:
    raise ReconError("bad row in shard")


def test_ray_executor_equals_local_executor(ray_local):
    items = list(range(23))
    assert map_shards(_double, items, executor="ray", num_shards=3) == map_shards(_double, items)


def test_a_killed_ray_worker_is_retried_and_nothing_is_lost_or_duplicated(ray_local, tmp_path):
    fn = functools.partial(_die_once, str(tmp_path), 7)
    items = list(range(20))
    got = map_shards(fn, items, executor="ray", num_shards=4, max_retries=2)
    assert (tmp_path / "died").exists()  # the worker really died once
    assert got == map_shards(fn, items, executor="local") == [x * 2 for x in items]


def test_a_worker_that_keeps_dying_fails_with_a_one_line_error(ray_local, tmp_path):
    fn = functools.partial(_die_once, str(tmp_path), 3)
    # max_retries=0: the first death is final, so the shard is lost and that must be an error, not a gap
    with pytest.raises(ReconError, match=r"shard rows 0\.\.4: its Ray worker died 1 times"):
        map_shards(fn, list(range(10)), executor="ray", num_shards=2, max_retries=0)


def test_a_stage_error_inside_ray_surfaces_as_the_same_recon_error(ray_local):
    with pytest.raises(ReconError, match="bad row in shard"):
        map_shards(_fail, [1, 2, 3], executor="ray", num_shards=2)


def test_sharded_ray_sampling_equals_unsharded_sampling(ray_local, tiny_model_dir, tmp_path):
    rows = _prompt_rows(10)
    rows.insert(5, dict(rows[1]))  # a repeated prompt: must stay in one shard with its first occurrence
    params = SamplingParams(n=2, max_new_tokens=8, seed=3)
    batch_size = 3

    def sampler(cache: Path):
        return functools.partial(sample_rows, model=str(tiny_model_dir), params=params, cache_dir=cache,
                                 batch_size=batch_size, progress=False)

    whole = sampler(tmp_path / "cache-a")(rows)
    sharded = map_shards(sampler(tmp_path / "cache-b"), rows, executor="ray", num_shards=2, align=batch_size,
                         key=lambda r: canonical_json(r["gen_messages"]))
    assert len(plan_shards(rows, 2, align=batch_size, key=lambda r: canonical_json(r["gen_messages"]))) == 2
    assert len(whole) == len(rows) * 2
    assert _row_hashes(sharded) == _row_hashes(whole)
    assert sharded == whole  # and in input order
