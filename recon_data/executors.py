"""Fan a row-wise stage (sampling, scoring) out over shards: in this process or as Ray tasks.

`map_shards(fn, items, executor="local"|"ray")` splits `items` into contiguous shards, runs
`fn(shard) -> list` on each, and concatenates the results in input order. Ray does the distribution,
scheduling and retries (a task whose worker dies is re-run up to `max_retries` times); this module
only plans shard boundaries and unwraps errors. `fn` must be a pure function of its shard (same
shard in, same rows out), so a retried shard cannot lose or duplicate rows.

Shard boundaries matter for determinism: the sampler seeds each chunk of `batch_size` *distinct*
prompts. `plan_shards(..., align=batch_size, key=<prompt key>)` only cuts where the number of
distinct keys before the cut is a multiple of `align` and no key occurs on both sides, so every
shard's chunks are exactly the unsharded run's chunks and the sharded output equals the unsharded one.

This module must not know about stages, models or the store; it must not start a Ray cluster of
its own beyond `ray.init` on this machine when none is reachable (see docs/SCALING.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .errors import ConfigError, ReconError, require_module

EXECUTORS = ("local", "ray")


def plan_shards(
    items: Sequence[Any],
    num_shards: int,
    *,
    align: int = 1,
    key: Callable[[Any], Hashable] | None = None,
) -> list[tuple[int, int]]:
    """Contiguous [start, end) shards, as even as the allowed cuts permit (fewer if too few cuts).

    A cut at p is allowed when the distinct keys in items[:p] number a multiple of `align` and
    none of them reappears in items[p:]. Without `key` every item is its own key.
    """
    n = len(items)
    if n == 0:
        return []
    if num_shards <= 1:
        return [(0, n)]
    keys = [key(x) for x in items] if key is not None else list(range(n))
    last = {k: i for i, k in enumerate(keys)}
    allowed: list[int] = []
    seen: set = set()
    reach = -1  # furthest last occurrence among keys seen so far
    for p in range(1, n):
        k = keys[p - 1]
        seen.add(k)
        reach = max(reach, last[k])
        if reach < p and len(seen) % align == 0:
            allowed.append(p)
    cuts: list[int] = []
    j = 0
    for s in range(1, num_shards):
        target = s * n / num_shards
        while j + 1 < len(allowed) and abs(allowed[j + 1] - target) <= abs(allowed[j] - target):
            j += 1
        if j < len(allowed) and (not cuts or allowed[j] > cuts[-1]):
            cuts.append(allowed[j])
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def map_shards(
    fn: Callable[[list], list],
    items: Sequence[Any],
    *,
    executor: str = "local",
    num_shards: int | None = None,
    ray_address: str | None = None,
    max_retries: int = 3,
    align: int = 1,
    key: Callable[[Any], Hashable] | None = None,
    num_cpus: int | None = None,
    task_options: dict | None = None,
) -> list:
    """`fn` over contiguous shards of `items`, results concatenated in input order.

    executor="ray": one Ray task per shard (`task_options` e.g. {"num_gpus": 1} per engine replica),
    connecting to `ray_address` (else $RAY_ADDRESS, else a local Ray with `num_cpus` CPUs) when Ray
    is not initialised yet. `num_shards` defaults to 1 locally and to the cluster's CPU count
    (divided by the CPUs each task asks for) under Ray.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is unknown: use one of {', '.join(EXECUTORS)}")
    for label, value, low in (("num_shards", num_shards, 1), ("max_retries", max_retries, 0), ("align", align, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ConfigError(f"{label} must be an integer >= {low} (got {value!r})")
    items = list(items)
    if not items:
        return []
    if executor == "local":
        shards = plan_shards(items, num_shards or 1, align=align, key=key)
        return _concat([fn(items[a:b]) for a, b in shards], shards)
    return _map_ray(fn, items, num_shards, ray_address, max_retries, align, key, num_cpus, task_options or {})


def _concat(results: list, shards: list[tuple[int, int]]) -> list:
    out: list = []
    for (a, b), res in zip(shards, results, strict=True):
        if not isinstance(res, list):
            raise ReconError(f"shard rows {a}..{b - 1}: the stage returned {type(res).__name__}, not a list")
        out.extend(res)
    return out


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Import Ray and connect: to `address` / $RAY_ADDRESS when given, else start a local Ray."""
    require_module("ray", "ray")
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise ReconError(f"cannot reach the Ray cluster at {address}: {err}; start it with "
                             "`ray start --head` or fix ray_address / $RAY_ADDRESS") from None
    return ray


def _call_shard(fn: Callable[[list], list], shard: list) -> list:
    return fn(shard)


def _map_ray(fn, items, num_shards, ray_address, max_retries, align, key, num_cpus, task_options) -> list:
    ray = ensure_ray(ray_address, num_cpus)
    from ray.exceptions import RayTaskError, WorkerCrashedError

    if num_shards is None:
        per_task = float(task_options.get("num_cpus", 1)) or 1.0
        num_shards = max(1, int(ray.cluster_resources().get("CPU", 1) // per_task))
    shards = plan_shards(items, num_shards, align=align, key=key)
    remote = ray.remote(max_retries=max_retries, **{"num_cpus": 1, **task_options})(_call_shard)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, items[a:b]) for a, b in shards]
    results: list = []
    try:
        for (a, b), ref in zip(shards, refs, strict=True):
            try:
                results.append(ray.get(ref))
            except RayTaskError as err:  # the stage raised: surface its own error, not Ray's wrapper
                cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
                if isinstance(cause, ReconError):
                    raise cause from None
                raise
            except WorkerCrashedError:
                raise ReconError(f"shard rows {a}..{b - 1}: its Ray worker died {max_retries + 1} times "
                                 "(out of memory? see the Ray logs); raise max_retries or shrink shards") from None
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    return _concat(results, shards)
