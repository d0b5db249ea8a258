"""`score` and `filter` commands: score rows from a file, or filter scored rows, and write Parquet.

Input: a Parquet file or JSONL (one row object per line). Output: Parquet (or JSONL when the name ends
in .jsonl), written to a temporary file and renamed into place, so a failure never leaves half a file.
Scorers/filters come from compact options or a YAML file (a list, or a mapping with `scorers:` /
`filters:`, e.g. a pipeline file). This module parses arguments and prints; the logic is in score.py
and filters.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .errors import ReconError
from .rows_io import read_rows, write_rows

app = typer.Typer(
    help="Score sample rows and filter scored rows (files in, Parquet out).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _value(text: str):
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_pairs(text: str, what: str) -> dict:
    """`k=v,k=v` with YAML scalars (numbers, booleans, null); values may not contain commas."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ReconError(f"{what}: expected key=value, got {part!r}")
        k, _, v = part.partition("=")
        out[k.strip()] = _value(v.strip())
    return out


def parse_scorer(spec: str) -> dict:
    """`name:type[:k=v,k=v]`, e.g. `tests:code_tests:reward=visible` or `kw:rule:metric=keyword_count`."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ReconError(
            f"--scorer {spec!r}: expected name:type[:key=value,...], e.g. kw:rule:metric=keyword_count"
        )
    return {
        "name": parts[0],
        "type": parts[1],
        "params": parse_pairs(parts[2], f"--scorer {spec!r}") if len(parts) == 3 else {},
    }


def parse_filter(spec: str) -> dict:
    """`type:k=v,k=v`, e.g. `threshold:column=score.kw,min=2` or `best_of_n:column=score.kw,k=1`."""
    kind, _, rest = spec.partition(":")
    if not kind:
        raise ReconError(f"--filter {spec!r}: expected type:key=value,..., e.g. best_of_n:column=score.x,k=1")
    return {"type": kind, **parse_pairs(rest, f"--filter {spec!r}")}


def load_section(path: Path, key: str) -> list[dict]:
    """A YAML list, or `key:` in a YAML mapping (a pipeline file works)."""
    import yaml

    if not path.is_file():
        raise ReconError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ReconError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list):
        raise ReconError(f"{path}: expected a list of {key} or a mapping with a '{key}:' list")
    return data


def _stats_table(stats: list[dict]) -> Table:
    table = Table("filter", "rows in", "rows out", "reason")
    for s in stats:
        table.add_row(s["filter"], str(s["rows_in"]), str(s["rows_out"]), s["reason"])
    return table


def score_cmd(
    input: Path = typer.Argument(..., help="Sample rows: .parquet or .jsonl.", show_default=False),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file (.parquet, or .jsonl).", show_default=False
    ),
    scorer: list[str] = typer.Option(
        [],
        "--scorer",
        "-s",
        help="name:type[:key=value,...] (repeatable), e.g. tests:code_tests:reward=visible, "
        "kw:rule:metric=keyword_count, truth:rule:metric=reference_match, "
        "mine:python:callable=my_mod:my_fn. Values are YAML scalars; no commas inside values.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML with a scorer list or a 'scorers:' key (e.g. a pipeline file).",
    ),
    store: Path | None = typer.Option(None, "--store", help="Store root to hide from sandboxed code."),
) -> None:
    """Score rows with code_tests / rule / python / judge / lie_detector scorers.

    Adds score.<name>, label.<name>, detail.<name> (JSON) and scorer_version.<name> columns.

    code_tests reads `completion` and `reference` (JSON: entry_point, prompt, visible_tests, hidden_tests).
    Its `reward` param picks the score: visible (the gameable proxy, default), hidden (true score, 0/1)
    or hidden_rate; set it explicitly.
    """
    from .score import score_rows

    scorers = [parse_scorer(s) for s in scorer] + (load_section(config, "scorers") if config else [])
    if not scorers:
        raise ReconError("no scorers: pass --scorer name:type[:k=v,...] or --config FILE")
    rows = read_rows(input)
    scored = score_rows(rows, scorers, store_root=store)
    write_rows(scored, out)
    for s in scorers:
        col = f"score.{s['name']}"
        vals = [r[col] for r in scored if r.get(col) is not None]
        mean = f"{sum(vals) / len(vals):.3f}" if vals else "n/a"
        err.print(f"{s['name']} ({s['type']}): {len(vals)}/{len(scored)} scored, mean {mean}")
    err.print(f"wrote {len(scored)} rows to {out}")


def filter_cmd(
    input: Path = typer.Argument(..., help="Scored rows: .parquet or .jsonl.", show_default=False),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file (.parquet, or .jsonl).", show_default=False
    ),
    filter: list[str] = typer.Option(
        [],
        "--filter",
        "-f",
        help="type:key=value,... (repeatable, applied in order), e.g. threshold:column=score.kw,min=2 ; "
        "best_of_n:column=score.kw,k=1 ; dedupe:near=true,threshold=0.9",
    ),
    where: list[str] = typer.Option(
        [],
        "--where",
        "-w",
        help="DuckDB predicate (an sql filter, after --filter ones), e.g. '\"score.x\" > 0.5'.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML with a filter list or a 'filters:' key (e.g. a pipeline file).",
    ),
    stats_out: Path | None = typer.Option(None, "--stats-out", help="Also write the filter stats as JSON."),
) -> None:
    """Keep the rows that pass threshold / best_of_n / dedupe / sql filters; prints per-filter stats."""
    from .filters import apply_filters

    filters = [parse_filter(f) for f in filter] + [{"type": "sql", "where": w} for w in where]
    filters += load_section(config, "filters") if config else []
    if not filters:
        raise ReconError("no filters: pass --filter, --where or --config FILE")
    rows = read_rows(input)
    kept, stats = apply_filters(rows, filters)
    write_rows(kept, out)
    if stats_out:
        stats_out.write_text(json.dumps(stats, indent=2) + "\n")
    err.print(_stats_table(stats))
    err.print(f"kept {len(kept)} of {len(rows)} rows; wrote {out}")


app.command("score")(score_cmd)
app.command("filter")(filter_cmd)
