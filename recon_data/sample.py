"""Sample completions for prompt rows, with a resumable content-addressed cache.

`sample_rows` turns each prompt row (a dict with chat messages under `messages_key`) into `params.n`
sample rows: the input fields plus completion, model_id, model_revision, backend, sampling_params,
seed, sample_index, prompt_tokens, completion_tokens, finish_reason, sample_key (docs/ARCHITECTURE.md).

Determinism and resume. Distinct prompts (in input order; identical prompts share samples because
they share keys) are grouped into chunks of the backend's `chunk_size` (`batch_size` prompts for
transformers). A chunk is seeded from hash(seed, its sample keys) and its samples are committed to
the cache in one transaction. A resumed run regenerates exactly the chunks with no committed samples,
with the same seeds and the same padding, so its table equals an uninterrupted run's.

Partly cached chunks (possible when the input or batch size changed since the cache was filled, i.e.
the chunks now group prompts differently): the whole chunk is generated again, exactly as a fresh run
of this input would generate it, but only its missing keys are used and stored; cached keys keep
their first-ever completion (counted as `discarded`). Generating only the missing prompts would
save compute but make new completions depend on what happened to be cached. So the output is a
deterministic function of (input, params, cache contents), and equals the no-cache output whenever
the cache was filled by runs over the same input and batch size.

This module must not write anything but the cache, and must not know backend internals.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, Completion, Prompt, derive_seed, load_backend
from .backends.hf import PromptTooLong
from .errors import ConfigError, ReconError
from .sample_cache import CachedSample, SampleCache, canonical_json, sample_key

SAMPLE_COLUMNS = (
    "completion",
    "model_id",
    "model_revision",
    "backend",
    "sampling_params",
    "seed",
    "sample_index",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "sample_key",
)


@dataclass(frozen=True)
class SamplingParams:
    """What is sampled; every field but `seed` goes into the `sampling_params` JSON column."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (
                isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1,
                "n must be an integer >= 1",
            ),
            (_finite(self.temperature) and self.temperature >= 0, "temperature must be a number >= 0"),
            (_finite(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (
                isinstance(self.max_new_tokens, int)
                and not isinstance(self.max_new_tokens, bool)
                and self.max_new_tokens >= 1,
                "max_new_tokens must be an integer >= 1",
            ),
            (
                isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63,
                "seed must be an integer in [0, 2^63)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"sampling params: {message} (got {asdict(self)})")

    def key_params(self) -> dict[str, Any]:
        """The params that shape a sample, normalised so 1 and 1.0 hash alike."""
        return {
            "n": self.n,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_new_tokens": self.max_new_tokens,
        }

    def to_json(self) -> str:
        return json.dumps(self.key_params(), sort_keys=True)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class SampleStats:
    """Counters of one `sample_rows` call (the pipeline puts them in the manifest)."""

    rows_in: int = 0
    samples: int = 0  # rows out
    unique_keys: int = 0  # distinct samples (identical prompts share keys)
    cached: int = 0  # distinct samples served from the cache
    generated: int = 0  # distinct samples generated and stored now
    discarded: int = 0  # generated again inside a partly cached chunk, cached value kept
    chunks_generated: int = 0
    chunks_cached: int = 0
    prompt_tokens: int = 0  # of generated samples
    completion_tokens: int = 0  # of generated samples
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
        extra = f", {self.discarded} regenerated-but-cached" if self.discarded else ""
        return (
            f"sampled {self.samples} rows from {self.rows_in} prompts: {self.generated} generated, "
            f"{self.cached} cached{extra}; {self.completion_tokens} new tokens in {self.seconds:.1f} s "
            f"({rate:.0f} tok/s)"
        )


@dataclass
class _Unit:
    """One distinct prompt and the keys of its n samples."""

    messages: list[dict[str, str]]
    keys: list[str]
    row_ids: list[str] = field(default_factory=list)  # rows sharing this prompt, to name them in errors


def _messages(row: Any, index: int, messages_key: str) -> list[dict[str, str]]:
    where = f"row {index}" + (f" (id {row.get('id')!r})" if isinstance(row, dict) and "id" in row else "")
    if not isinstance(row, dict):
        raise ReconError(f"{where}: a prompt row must be a dict, got {type(row).__name__}")
    if messages_key not in row:
        raise ReconError(
            f"{where}: no '{messages_key}' column; render prompts with a template first "
            "or pass the messages column name (messages_key / --messages-key)"
        )
    msgs = row[messages_key]
    if isinstance(msgs, (str, bytes)) or not isinstance(msgs, Sequence) or len(msgs) == 0:
        raise ReconError(f"{where}: '{messages_key}' must be a non-empty list of {{role, content}} messages")
    out = []
    for j, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ReconError(
                f"{where}: message {j} of '{messages_key}' must have string 'role' and 'content'"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _progress(enabled: bool, total: int, done: int) -> tuple[Any, Any]:
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("sampling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rows_s]:.1f} rows/s"),
        TextColumn("{task.fields[tok_s]:.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    bar.start()
    task = bar.add_task("sampling", total=total, completed=done, rows_s=0.0, tok_s=0.0)
    return bar, task


def sample_rows(
    rows: list[dict],
    *,
    model: str,
    backend: str = "transformers",
    params: SamplingParams,
    cache_dir: Path | None,
    batch_size: int = 4,
    options: dict | None = None,
    progress: bool = True,
    messages_key: str = "gen_messages",
) -> list[dict]:
    """Each input row -> `params.n` sample rows (input fields + sample columns); see module doc."""
    out, _ = sample_rows_with_stats(
        rows,
        model=model,
        backend=backend,
        params=params,
        cache_dir=cache_dir,
        batch_size=batch_size,
        options=options,
        progress=progress,
        messages_key=messages_key,
    )
    return out


def sample_rows_with_stats(
    rows: list[dict],
    *,
    model: str,
    backend: str = "transformers",
    params: SamplingParams,
    cache_dir: Path | None,
    batch_size: int = 4,
    options: dict | None = None,
    progress: bool = True,
    messages_key: str = "gen_messages",
) -> tuple[list[dict], SampleStats]:
    """`sample_rows` plus its counters (generated vs cached, tokens, seconds) for manifests and logs."""
    start = time.perf_counter()
    if not isinstance(params, SamplingParams):
        raise ConfigError("params must be a recon_data.sample.SamplingParams")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
    stats = SampleStats(rows_in=len(rows))
    all_messages = [_messages(row, i, messages_key) for i, row in enumerate(rows)]
    if not rows:
        return [], stats
    be = load_backend(backend, model, options, batch_size)
    try:
        return _run(rows, all_messages, be, params, cache_dir, progress, stats, start)
    finally:
        be.close()


def _run(
    rows: list[dict],
    all_messages: list[list[dict[str, str]]],
    be: Backend,
    params: SamplingParams,
    cache_dir: Path | None,
    progress: bool,
    stats: SampleStats,
    start: float,
) -> tuple[list[dict], SampleStats]:
    kp = params.key_params()
    units: dict[str, _Unit] = {}
    row_units: list[str] = []
    for index, msgs in enumerate(all_messages):
        pk = canonical_json(msgs)
        if pk not in units:
            keys = [
                sample_key(
                    model_id=be.model_id,
                    model_revision=be.model_revision,
                    backend=be.identity,
                    messages=msgs,
                    params=kp,
                    seed=params.seed,
                    sample_index=i,
                )
                for i in range(params.n)
            ]
            units[pk] = _Unit(msgs, keys)
        row = rows[index]
        units[pk].row_ids.append(str(row.get("id", f"row {index}")) if isinstance(row, dict) else f"row {index}")
        row_units.append(pk)
    ordered = list(units.values())
    chunks = [ordered[i : i + be.chunk_size] for i in range(0, len(ordered), be.chunk_size)]
    stats.unique_keys = len(ordered) * params.n

    cache = SampleCache(cache_dir) if cache_dir is not None else None
    try:
        found: dict[str, CachedSample] = cache.get_many(k for u in ordered for k in u.keys) if cache else {}
        stats.cached = len(found)
        pending = [c for c in chunks if any(k not in found for u in c for k in u.keys)]
        stats.chunks_cached = len(chunks) - len(pending)
        bar, task = _progress(
            progress,
            len(rows) * params.n,
            sum(params.n for pk in row_units if all(k in found for k in units[pk].keys)),
        )
        rows_per_unit = {pk: 0 for pk in units}
        for pk in row_units:
            rows_per_unit[pk] += 1
        gen_start = time.perf_counter()

        def commit(chunk: list[_Unit], result: list[list[Completion]]) -> None:
            if len(result) != len(chunk) or any(len(r) != params.n for r in result):
                raise RuntimeError(
                    f"backend {be.name} returned {[len(r) for r in result]} completions for "
                    f"{len(chunk)} prompts x n={params.n}"
                )
            fresh: dict[str, CachedSample] = {}
            for unit, comps in zip(chunk, result, strict=True):
                for key, c in zip(unit.keys, comps, strict=True):
                    if key in found:
                        stats.discarded += 1
                        continue
                    fresh[key] = CachedSample(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason)
                    stats.prompt_tokens += c.prompt_tokens or 0
                    stats.completion_tokens += c.completion_tokens or 0
            if cache is not None and fresh:
                cache.put_many(fresh, model_id=be.model_id, backend=be.name)
            found.update(fresh)
            stats.generated += len(fresh)
            stats.chunks_generated += 1
            if bar is not None:
                elapsed = max(time.perf_counter() - gen_start, 1e-9)
                done_rows = sum(rows_per_unit[canonical_json(u.messages)] * params.n for u in chunk)
                bar.update(
                    task,
                    advance=done_rows,
                    rows_s=stats.generated / elapsed,
                    tok_s=stats.completion_tokens / elapsed,
                )

        def chunk_call(chunk: list[_Unit]) -> list[list[Completion]]:
            keys = [k for u in chunk for k in u.keys]
            prompts = [Prompt(u.messages, derive_seed(params.seed, "prompt", u.keys[0])) for u in chunk]
            try:
                return be.generate(prompts, params, derive_seed(params.seed, "chunk", *keys, bits=63))
            except PromptTooLong as exc:
                ids = chunk[exc.index].row_ids
                more = f" (and {len(ids) - 1} more rows with the same prompt)" if len(ids) > 1 else ""
                raise ReconError(f"record {ids[0]}{more}: {exc}") from None

        try:
            if be.concurrency <= 1:
                for chunk in pending:
                    commit(chunk, chunk_call(chunk))
            else:
                _run_concurrent(pending, chunk_call, commit, be.concurrency, stats)
        finally:
            if bar is not None:
                bar.stop()
    finally:
        if cache is not None:
            cache.close()

    stats.seconds = time.perf_counter() - start
    if stats.failures:
        raise ReconError(
            f"{len(stats.failures)} of {len(pending)} prompt chunks failed ({stats.failures[0]}); "
            f"the {stats.generated} samples that succeeded are cached"
            + (" — rerun to retry only the failed ones" if cache is not None else "")
        )
    sp_json = params.to_json()
    out: list[dict] = []
    for row, pk in zip(rows, row_units, strict=True):
        for i, key in enumerate(units[pk].keys):
            s = found[key]
            out.append(
                {
                    **row,
                    "completion": s.completion,
                    "model_id": be.model_id,
                    "model_revision": be.model_revision,
                    "backend": be.name,
                    "sampling_params": sp_json,
                    "seed": params.seed,
                    "sample_index": i,
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "finish_reason": s.finish_reason,
                    "sample_key": key,
                }
            )
    stats.samples = len(out)
    if progress:
        print("recon sample: " + stats.summary(), file=sys.stderr)
    return out, stats


SAMPLE_TYPES = {
    "seed": "int64",
    "sample_index": "int32",
    "prompt_tokens": "int32",
    "completion_tokens": "int32",
}


def to_table(rows: list[dict]) -> Any:
    """Sample rows -> pyarrow Table with the documented column types (int32 counts, int64 seed)."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    for name, type_name in SAMPLE_TYPES.items():
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).cast(getattr(pa, type_name)()))
    return table


def _run_concurrent(
    pending: list[list[_Unit]],
    call: Callable[[list[_Unit]], list[list[Completion]]],
    commit: Callable[[list[_Unit], list[list[Completion]]], None],
    workers: int,
    stats: SampleStats,
) -> None:
    """Run chunks on a thread pool; commit each as it finishes (in this thread: one SQLite connection).

    A chunk that fails with a ReconError is recorded and the others go on, so one bad request does not
    throw away a long run; anything else (a bug, Ctrl-C) cancels the rest.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recon-sample")
    try:
        futures: dict[Future, list[_Unit]] = {pool.submit(call, c): c for c in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    result = fut.result()
                except ReconError as exc:
                    stats.failures.append(str(exc))
                    continue
                commit(futures[fut], result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
