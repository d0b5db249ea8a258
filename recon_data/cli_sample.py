"""`recon sample` and `recon cache-stats`: sample completions for a file of prompt rows, inspect the cache.

Mount with `app.add_typer(cli_sample.app)` (no name: the commands join the parent app directly).
This module parses options, reads and writes files, and maps ReconError to a one-line message and
exit code; the sampling itself lives in `recon_data.sample`. It must not print secrets: options are
shown back only by name.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ReconError
from .rows_io import read_rows, write_rows

app = typer.Typer(
    help="Sample completions with a resumable cache.", no_args_is_help=True, add_completion=False
)


def default_cache_dir() -> Path:
    """`<store>/cache`, the store being $RECON_STORE or ./recon-store (as in the store layout)."""
    return Path(os.environ.get("RECON_STORE", "recon-store")) / "cache"


def _fail(err: ReconError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that parses as JSON (numbers, true, {...}) is taken as JSON."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ReconError(f"--option '{key}' must look like key=value (e.g. --option concurrency=16)")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


@app.command("sample")
def sample(
    prompts: Annotated[
        Path,
        typer.Option(
            "--prompts",
            help="Prompt rows: .jsonl or .parquet, each row with chat messages under --messages-key.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file: .parquet (typed columns) or .jsonl. "
            "Written atomically; existing file replaced.",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="Model spec: 'embedded', a HF model folder or a .gguf file "
            "(openai backend: the served model name)."
        ),
    ] = "embedded",
    backend: Annotated[str, typer.Option(help="transformers | vllm | openai.")] = "transformers",
    n: Annotated[int, typer.Option("--n", help="Samples per prompt.")] = 4,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1].")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens per completion.")] = 48,
    seed: Annotated[int, typer.Option(help="Sampling seed; same seed + same inputs = same table.")] = 0,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Prompts per batch (transformers); also the unit committed "
            "to the cache, so keep it fixed across resumes."
        ),
    ] = 4,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Sampling cache folder [default: $RECON_STORE/cache or ./recon-store/cache]."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompt rows.", min=0)] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="Backend option key=value, repeatable (values parsed as JSON when they can be): "
            "transformers dtype; vllm any vllm.LLM argument; openai base_url, model, api_key_env, "
            "concurrency, max_retries, timeout, n_per_request.",
        ),
    ] = None,
    messages_key: Annotated[str, typer.Option(help="Column holding the chat messages.")] = "gen_messages",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary line.")] = False,
) -> None:
    """Sample N completions per prompt row; a killed run resumes from the cache without regenerating.

    Example: recon sample --prompts prompts.jsonl --out samples.parquet --n 4 --model embedded
    """
    from .sample import SamplingParams, sample_rows_with_stats, to_table

    try:
        rows = read_rows(prompts, what="prompts file", limit=limit)
        params = SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        result, stats = sample_rows_with_stats(
            rows,
            model=model,
            backend=backend,
            params=params,
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()),
            batch_size=batch_size,
            options=parse_options(option or []),
            progress=not quiet,
            messages_key=messages_key,
        )
        write_rows(result, out, to_table=to_table)
    except ReconError as err:
        raise _fail(err) from None
    if not quiet:
        typer.echo(f"wrote {len(result)} rows to {out}", err=True)


@app.command("cache-stats")
def cache_stats(
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Sampling cache folder [default: $RECON_STORE/cache or ./recon-store/cache]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show how many samples the cache holds (per model and backend) and its size on disk."""
    from .sample_cache import CACHE_FILE, SampleCache

    folder = cache_dir or default_cache_dir()
    if not (folder / CACHE_FILE).is_file():
        raise _fail(
            ReconError(f"no sampling cache at {folder}: run `recon sample` first or pass --cache-dir")
        )
    try:
        with SampleCache(folder) as cache:
            st = cache.stats()
            per_model = cache.by_model()
    except ReconError as err:
        raise _fail(err) from None
    info = {
        "path": str(folder),
        "entries": st.entries,
        "bytes": st.bytes,
        "by_model": [{"model_id": m, "backend": b, "entries": c} for m, b, c in per_model],
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"{folder}: {st.entries} samples, {st.bytes / 1e6:.2f} MB")
    for m, b, c in per_model:
        typer.echo(f"  {c:>8}  {b:<12} {m}")


if __name__ == "__main__":  # pragma: no cover - `python -m recon_data.cli_sample`
    sys.exit(app())
